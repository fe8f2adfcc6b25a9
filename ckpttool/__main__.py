from ckpttool.cli.main import cli

cli(prog_name="ckpt")
