# Every target sets itself up: the virtualenv is created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-topologies test-brokers fault-figures demo lint typecheck bench bench-rabbitmq soak clean dist

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Four pytest-xdist workers on two cores: most tests spend their time waiting on
# worker processes, servers and timers, not on the CPU (measured on this
# machine: the whole suite took 1,012 s with 2 workers, 617 s with 4, for the
# part `make test` ran then). --dist loadfile keeps each file on one worker.
PYTEST := $(BIN)/pytest -q -p no:cacheprovider -n 4 --dist loadfile --reruns 2 --reruns-delay 1 -rR

# The whole suite, in one run: every broker, every Redis topology, and Valkey.
test: $(STAMP)
	$(BIN)/ruff check conveyor tests
	$(BIN)/mypy
	$(PYTEST) $(PYTEST_ARGS)

# Subsets, for working on one area: tests that start a Sentinel set, a Redis
# Cluster or a Valkey server of their own (marker "topology"), and the fault
# suite's default cases on PostgreSQL and RabbitMQ (marker "other_brokers").
test-topologies: $(STAMP)
	$(PYTEST) -m topology $(PYTEST_ARGS)

test-brokers: $(STAMP)
	$(PYTEST) -m other_brokers $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check conveyor tests
	$(BIN)/mypy

# make demo PG=1: the same shop on PostgreSQL (127.0.0.1:5432, database conveyor_demo).
demo: $(STAMP)
	$(BIN)/python examples/run_demo.py $(if $(PG),--postgres)

# Benchmarks flush their databases: they get a Redis of their own on port 6390.
BENCH_REDIS := redis-cli -p 6390 ping >/dev/null 2>&1 || redis-server --port 6390 --save "" \
	--appendonly no --daemonize yes --logfile /tmp/conveyor-bench-redis.log

bench: $(STAMP)
	$(BENCH_REDIS)
	$(BIN)/python -m benchmarks.run

# Conveyor, Celery and Dramatiq on RabbitMQ (vhosts conveyor-bench-*, made with rabbitmqctl).
bench-rabbitmq: $(STAMP)
	$(BENCH_REDIS)
	$(BIN)/python -m benchmarks.run --rabbitmq

# The fault suite on every broker and topology, with its figures table gathered
# from the xdist workers into benchmarks/results/raw/fault-figures.txt.
fault-figures: $(STAMP)
	mkdir -p benchmarks/results/raw && rm -f benchmarks/results/raw/fault-figures.txt
	CONVEYOR_FAULT_FIGURES=$(CURDIR)/benchmarks/results/raw/fault-figures.txt $(PYTEST) tests/faults $(PYTEST_ARGS)
	sort -k2 benchmarks/results/raw/fault-figures.txt

soak: $(STAMP)
	$(BIN)/pytest -q tests/faults/test_soak.py --soak

dist: $(STAMP)
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache dist build
