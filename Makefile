# Every knob of the workflow, visible in one place. Override on the command line:
#   make train DATA_DIR=../shared/data/clothing-dataset-small WEIGHTS=../shared/weights/xception_imagenet_notop.weights.h5
PYTHON      ?= python3
DATA_DIR    ?= data/clothing-dataset-small
DATA_REPO   ?= https://github.com/alexeygrigorev/clothing-dataset-small
WEIGHTS     ?= imagenet
# Photos by other contributors (clothing-dataset-extra, beside DATA_DIR) join training when present.
EXTRA_DIR   ?= $(wildcard $(dir $(patsubst %/,%,$(DATA_DIR)))clothing-dataset-extra)
TRAIN_DIR   ?= artifacts/train
EXPORT_DIR  ?= artifacts/export
# Where make convert installs the chosen model and make model-card measures it (the one the function serves).
MODEL_DIR   ?= lambda_function/model
# Extra options, e.g. TRAIN_ARGS="--epochs 30 --image-size 299" (python -m train --help), CONVERT_ARGS="--install tflite-int8".
TRAIN_ARGS   ?=
CONVERT_ARGS ?=
ARCH        ?= x86_64
# Serving runtime of the build: tflite (LiteRT, default) or onnx (ONNX Runtime, lambda_function/model/onnx/).
BACKEND     ?= tflite
# Where the converted model will run (convert --target): lambda-x86_64 (the default: what make build ships;
# chosen by the repo's AVX2 latency table, the same on every build machine), lambda-arm64, device, host (timed here).
TARGET      ?= lambda-x86_64
EVENT       ?= events/direct.json
# make invoke without Docker: URLs in EVENT are served from this folder on loopback (empty: the real URLs).
SAMPLES     ?= samples
STACK_NAME  ?= edge-clothing-classifier
# sam build's output; make deploy ships it, with the architecture it was built for (its build-info.json).
BUILD_DIR   ?= .aws-sam/build
SAMCONFIG   ?= samconfig.toml
# classify-bucket: the objects to classify; LOCAL=1 runs the Distributed Map's batches here instead.
BUCKET      ?=
PREFIX      ?=
LOCAL       ?=
WEB_PORT    ?= 8000
# bench-serve, power-tune: ISA=avx2 runs them with AVX-512/VNNI/AMX hidden from CPUID (bench/isa.py), to time
# the AVX2 code paths Lambda's x86_64 promises on a build machine that has more. Empty: the machine as it is.
ISA         ?=

DEV_VENV     := .venv
RUNTIME_VENV := .venv-runtime
SAM_VENV     := .venv-sam
DEV_PY       := $(DEV_VENV)/bin/python
RUNTIME_PY   := $(RUNTIME_VENV)/bin/python
# aws-sam-cli lives in its own venv: it brings ~60 packages (flask, cfn-lint...) the code never imports.
SAM          ?= $(SAM_VENV)/bin/sam
SAM_PY       := $(SAM_VENV)/bin/python
BUILD_INFO   := $(BUILD_DIR)/ClassifierFunction/build-info.json
ISA_RUN      := $(if $(ISA),$(DEV_PY) -m bench.isa $(ISA) --)
ISA_SUFFIX   := $(if $(ISA),_$(ISA))
SAM_VERSION  ?= 1.170.0
# SAM never phones home from our commands.
export SAM_CLI_TELEMETRY := 0

.DEFAULT_GOAL := help
.PHONY: help demo test lint format data train evaluate convert model-card build invoke invoke-local deploy bench \
	bench-serve clean bench-bombs classify-bucket bench-bulk ondevice web test-web bench-web eval-ondevice check-arm64 \
	power-tune power-tune-docs

# `make help` groups the targets by the tag that starts their "## [group]" comment, in this order.
HELP_GROUPS := use:Use the bundled model|train:Train your own classes (docs/own-classes.md)|deploy:Deploy to AWS (docs/deploying.md)|measure:Measure|develop:Develop

help: ## [develop] List the targets, grouped by what you want to do
	@awk -F ':.*## ' -v groups='$(HELP_GROUPS)' ' \
		/^[a-z0-9-]+:.*## \[[a-z]+\] / { tag = $$2; sub(/\].*/, "", tag); sub(/^\[/, "", tag); \
			text = $$2; sub(/^\[[a-z]+\] /, "", text); rows[tag] = rows[tag] sprintf("  %-16s %s\n", $$1, text) } \
		END { n = split(groups, order, "|"); for (i = 1; i <= n; i++) { split(order[i], g, ":"); \
			if (g[1] in rows) printf "%s%s:\n%s", (i > 1 ? "\n" : ""), g[2], rows[g[1]] } }' $(MAKEFILE_LIST)

# --- environments (rebuilt only when their requirements change) ---------------------------------
$(RUNTIME_VENV)/.installed: lambda_function/requirements.txt
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_PY) -m pip install -q --upgrade pip
	$(RUNTIME_PY) -m pip install -q -r lambda_function/requirements.txt
	touch $@

$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAM_VENV)/bin/python -m pip install -q aws-sam-cli==$(SAM_VERSION)
	touch $@

$(DEV_VENV)/.installed: pyproject.toml lambda_function/requirements.txt
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_PY) -m pip install -q --upgrade pip
	$(DEV_PY) -m pip install -q -e ".[dev]"
	touch $@

# --- the two quickstart commands -----------------------------------------------------------------
demo: $(RUNTIME_VENV)/.installed ## [use] Classify samples/ through the Lambda handler (runtime deps only, no TensorFlow)
	$(RUNTIME_PY) -m local.demo samples

test: $(DEV_VENV)/.installed $(SAM_VENV)/.installed ## [develop] Run the linter and the whole test suite
	$(DEV_PY) -m ruff check .
	$(DEV_PY) -m ruff format --check .
	SAM_CLI=$(abspath $(SAM)) $(DEV_PY) -m pytest

lint: $(DEV_VENV)/.installed ## [develop] ruff check + format check
	$(DEV_PY) -m ruff check .
	$(DEV_PY) -m ruff format --check .

format: $(DEV_VENV)/.installed ## [develop] Apply ruff's fixes and formatting
	$(DEV_PY) -m ruff check --fix .
	$(DEV_PY) -m ruff format .

# --- the workflow: data -> train -> convert -> build -> invoke -> deploy ------------------------
data: ## [train] Clone the dataset into DATA_DIR unless it is already there
	@if [ -d "$(DATA_DIR)/train" ]; then echo "$(DATA_DIR) already holds the dataset"; \
	else git clone --depth 1 $(DATA_REPO) $(DATA_DIR); fi

train: $(DEV_VENV)/.installed ## [train] Xception transfer learning on DATA_DIR/{train,validation,test}/<class>/ (+ EXTRA_DIR) with WEIGHTS -> TRAIN_DIR
	$(DEV_PY) -m train --data-dir $(DATA_DIR) --output-dir $(TRAIN_DIR) --weights $(WEIGHTS) \
		$(if $(EXTRA_DIR),--extra-dir $(EXTRA_DIR)) $(TRAIN_ARGS)

evaluate: $(DEV_VENV)/.installed ## [train] Re-evaluate TRAIN_DIR/model.keras on the test split (full Keras model, slow)
	$(DEV_PY) -m train.evaluate $(TRAIN_DIR)/model.keras --data-dir $(DATA_DIR) --output-dir $(TRAIN_DIR)/evaluation

convert: $(DEV_VENV)/.installed ## [train] Export TFLite/ONNX variants, validate, report, install the one chosen for TARGET in MODEL_DIR
	$(DEV_PY) -m convert $(TRAIN_DIR)/model.keras --output-dir $(EXPORT_DIR) --data-dir $(DATA_DIR) --install auto \
		--target $(TARGET) --install-dir $(MODEL_DIR) $(CONVERT_ARGS)

model-card: $(RUNTIME_VENV)/.installed ## [train] Measure MODEL_DIR's model on DATA_DIR's test split -> MODEL_DIR/MODEL_CARD.md
	$(RUNTIME_PY) -m bench.model_card --data-dir $(DATA_DIR) --model $(MODEL_DIR)/model.tflite

build: $(SAM_VENV)/.installed ## [deploy] sam build (makefile builder, no Docker) for ARCH and BACKEND -> BUILD_DIR
	ARCH=$(ARCH) BACKEND=$(BACKEND) $(SAM) build --build-dir $(BUILD_DIR) --parameter-overrides Architecture=$(ARCH)
	$(SAM_PY) -m deploy.check_build --build-dir $(BUILD_DIR) --pin
	@du -sh $(BUILD_DIR)/ClassifierFunction | awk '{print "unzipped artifact: " $$1}'

# deploy and invoke's Docker branch need a build of the current code; one is made when missing or older
# than the sources (with ARCH: pass the one you mean).
$(BUILD_INFO): template.yaml lambda_function/requirements.txt $(wildcard lambda_function/*.py) \
		lambda_function/model/model.tflite lambda_function/model/model.json deploy/build_artifact.py
	$(MAKE) --no-print-directory build

invoke: ## [deploy] Run EVENT through the function: sam local invoke if Docker answers, else invoke-local
	@if docker info >/dev/null 2>&1; then \
		echo "make invoke: Docker answers: sam local invoke"; \
		$(MAKE) --no-print-directory $(SAM_VENV)/.installed $(BUILD_INFO) && \
		$(SAM) local invoke ClassifierFunction -e $(EVENT) --template-file $(BUILD_DIR)/template.yaml; \
	else \
		echo "make invoke: no Docker: the artifact under awslambdaric on a loopback Runtime API (make invoke-local)"; \
		$(MAKE) --no-print-directory invoke-local EVENT=$(EVENT) SAMPLES=$(SAMPLES); \
	fi

invoke-local: $(DEV_VENV)/.installed ## [deploy] EVENT through awslambdaric + a loopback Runtime API, read-only task root (no Docker)
	$(DEV_PY) -m deploy.build_artifact --platform local --backend $(BACKEND) --out build/artifact
	$(DEV_PY) -m local.lambda_runtime build/artifact $(EVENT) $(if $(SAMPLES),--samples $(SAMPLES))

# The architecture comes from the build, never from ARCH's default: an ARCH passed here (or one saved in
# SAMCONFIG) that differs from the build is refused, and the built template allows only the built one.
deploy: $(SAM_VENV)/.installed $(BUILD_INFO) ## [deploy] sam deploy --guided of the build (docs/deploying.md)
	$(SAM_PY) -m deploy.check_build --build-dir $(BUILD_DIR) --samconfig $(SAMCONFIG) \
		$(if $(filter command line environment,$(origin ARCH)),--arch $(ARCH))
	$(SAM) deploy --guided --stack-name $(STACK_NAME) --template-file $(BUILD_DIR)/template.yaml \
		--config-file $(abspath $(SAMCONFIG))

bench: $(DEV_VENV)/.installed ## [measure] Re-run every export + validation and print the size/accuracy/latency report
	$(DEV_PY) -m convert $(TRAIN_DIR)/model.keras --output-dir $(EXPORT_DIR) --data-dir $(DATA_DIR) --install no
	cat $(EXPORT_DIR)/report.md

bench-serve: $(DEV_VENV)/.installed ## [measure] Handler vs bare invoke latency, cold start, RSS: bundled model, local artifact
	$(DEV_PY) -m deploy.build_artifact --platform local --out build/artifact
	$(ISA_RUN) $(DEV_PY) -m bench.serve --model lambda_function/model/model.tflite --artifact build/artifact \
		--requests 1000 --json build/bench_serve$(ISA_SUFFIX).json

bench-bombs: $(DEV_VENV)/.installed ## [measure] Hostile inputs through the handler: worst decode CPU and peak RSS per bomb
	$(DEV_PY) -m bench.bombs --json build/bench_bombs.json

classify-bucket: $(DEV_VENV)/.installed ## [deploy] Classify s3://BUCKET/PREFIX: start the stack's Distributed Map (LOCAL=1: here)
	$(DEV_PY) -m deploy.classify_bucket --bucket "$(BUCKET)" --prefix "$(PREFIX)" --stack $(STACK_NAME) \
		$(if $(LOCAL),--local)

# Lambda memory sizes as cgroup v1 limits (root; else unlimited, said so): time, cold start, memory, $.
power-tune: $(DEV_VENV)/.installed ## [measure] Handler per Lambda memory size (CPU quota + memory limit): ms, cold start, $/M images, cheapest size
	$(ISA_RUN) $(DEV_PY) -m bench.power_tune --json build/power_tune$(ISA_SUFFIX).json

power-tune-docs: $(DEV_VENV)/.installed ## [measure] docs/bulk.md's cost tables from build/power_tune*.json (make power-tune [ISA=avx2] first)
	$(DEV_PY) -m bench.power_tune --write-docs build/power_tune.json $(wildcard build/power_tune_avx2.json)

bench-bulk: $(DEV_VENV)/.installed ## [measure] Images/s of one instance on the bulk path: bundled model, 50 test photos, moto S3
	nice -n 10 $(DEV_PY) -m bench.bulk --data-dir $(DATA_DIR) --images 50 --json build/bench_bulk.json

# --- on a device: MediaPipe-ready model, in-browser page (docs/on-device.md) ---------------------
WEB_MODEL := web/model/model.tflite
# The on-device variant of the bundled model (softmax + TFLite Model Metadata), built, not committed.
$(WEB_MODEL): lambda_function/model/model.tflite lambda_function/model/model.json | $(DEV_VENV)/.installed
	$(DEV_PY) -m convert.ondevice lambda_function/model/model.tflite $@

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

# Playwright drives Debian's Chromium (apt, once); it never downloads a browser of its own.
$(DEV_VENV)/.installed-web: $(DEV_VENV)/.installed
	$(DEV_PY) -m pip install -q -e ".[dev,web]"
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	touch $@

ondevice: $(WEB_MODEL) ## [use] On-device variant of the bundled model (MediaPipe ImageClassifier-ready) -> web/model/

web: $(WEB_MODEL) web/node_modules/.installed ## [use] Serve the in-browser classifier on http://127.0.0.1:WEB_PORT
	$(DEV_PY) -m local.web_page --port $(WEB_PORT)

test-web: $(WEB_MODEL) web/node_modules/.installed $(DEV_VENV)/.installed-web ## [develop] The page in headless Chromium
	REQUIRE_WEB=1 $(DEV_PY) -m pytest tests/web -q

bench-web: $(WEB_MODEL) web/node_modules/.installed $(DEV_VENV)/.installed-web ## [measure] The page in Chromium: load, time/photo, CLI agreement, PNG
	$(DEV_PY) -m bench.web --data-dir $(DATA_DIR) --limit 50 \
		--json build/web/bench.json --screenshot build/web/screenshot.png

eval-ondevice: $(WEB_MODEL) ## [measure] MediaPipe's ImageClassifier vs our CLI on the test split (~10 min)
	nice -n 10 $(DEV_PY) -m bench.ondevice --ondevice $(WEB_MODEL) --data-dir $(DATA_DIR) \
		--split test --json build/ondevice_eval.json

# --- arm64 under emulation (slow; not part of make test) -----------------------------------------
ARM64_ROOT     ?= build/arm64-root
ARM64_ARTIFACT ?= build/arm64-artifact
# Debian bookworm's Python, for which the arm64 artifact is built here (Lambda's is 3.12).
ARM64_PYTHON   ?= 3.11

check-arm64: $(DEV_VENV)/.installed ## [deploy] Slow, needs root: arm64 artifact under qemu classifies samples/ (CPU files shown, hidden)
	@command -v qemu-aarch64-static >/dev/null && command -v mmdebstrap >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq qemu-user-static mmdebstrap; }
	@test -x $(ARM64_ROOT)/usr/bin/python$(ARM64_PYTHON) || { rm -rf $(ARM64_ROOT) && \
		mmdebstrap --mode=root --arch=arm64 --variant=extract \
		--include=python$(ARM64_PYTHON),libpython$(ARM64_PYTHON)-stdlib,libstdc++6 bookworm $(ARM64_ROOT); }
	$(DEV_PY) -m deploy.build_artifact --platform lambda --arch arm64 --python-version $(ARM64_PYTHON) \
		--out $(ARM64_ARTIFACT)
	nice -n 10 $(DEV_PY) -m deploy.check_arm64 --root $(ARM64_ROOT) --artifact $(ARM64_ARTIFACT) --samples samples \
		--json build/check_arm64.json

clean: ## [develop] Remove environments, caches and build outputs (keeps artifacts/ with trained models)
	rm -rf $(DEV_VENV) $(RUNTIME_VENV) $(SAM_VENV) .aws-sam build .pytest_cache .ruff_cache web/node_modules web/model
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
