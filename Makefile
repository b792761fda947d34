# The two commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two installs, each with its stamp: what serving and the demo need (`make run`), and everything
# (`make test`). The full one marks the small one done too, so neither reinstalls the other.
RUN_STAMP := $(VENV)/.run-stamp
STAMP := $(VENV)/.installed-stamp

.PHONY: install install-run system-deps run test lint typecheck unit integration e2e bench proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

## The core and the sklearn extra (the iris demo): no converter frameworks, no dev tools.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[sklearn]'
	touch $(RUN_STAMP)

## Every converter's extra, Ray and the dev tools (about 3 GB).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[sklearn,torch,keras,transformers,llm,media,tensorflow,ray,postgres,s3,dev]'
	touch $(RUN_STAMP) $(STAMP)

install-run: $(RUN_STAMP)
install: $(STAMP)

## Debian packages the tests drive for real (Prometheus, Chromium, PostgreSQL, and wrk for the
## benchmarks' smoke runs); installed when missing and root.
SYSTEM_PACKAGES := prometheus chromium postgresql wrk
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
		else echo "missing:$$missing (apt-get install$$missing); their tests will fail"; fi; \
	fi

## Start modelplane on 127.0.0.1:8000 with the iris demo deployed.
run: install-run
	$(BIN)/modelplane serve --demo

## Lint, types, import rules, then every test tier.
test: install system-deps lint typecheck
	$(BIN)/pytest

lint: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/bandit -q -c pyproject.toml -r src
	$(BIN)/lint-imports

## mypy over src/ and bench/ (strict) and tests/ (bodies checked, annotations optional): see
## [tool.mypy] in pyproject.toml.
typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit
integration: install
	$(BIN)/pytest tests/integration
e2e: install
	$(BIN)/pytest tests/e2e

bench: install
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/quotas.py
	$(BIN)/python bench/llm.py
	$(BIN)/python bench/soak.py

## Regenerate the V2 gRPC stubs (protobuf 6 gencode, private descriptor pool: see the README there).
PROTO_DIR := src/modelplane/protocol/grpc
proto:
	$(PYTHON) -m venv /tmp/modelplane-protoc
	/tmp/modelplane-protoc/bin/pip install -q 'grpcio-tools<1.76' 'protobuf<7'
	cd $(PROTO_DIR) && /tmp/modelplane-protoc/bin/python -m grpc_tools.protoc -I. \
		--python_out=. --pyi_out=. --grpc_python_out=. grpc_predict_v2.proto
	sed -i 's/^import grpc_predict_v2_pb2 as/from modelplane.protocol.grpc import grpc_predict_v2_pb2 as/' \
		$(PROTO_DIR)/grpc_predict_v2_pb2_grpc.py
	sed -i 's/_descriptor_pool.Default().AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' \
		$(PROTO_DIR)/grpc_predict_v2_pb2.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
