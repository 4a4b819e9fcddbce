from conveyor._cli import run

run()
