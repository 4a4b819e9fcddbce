from conveyor.cli import run

run()
