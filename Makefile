# fashion_sweeps: every job a user runs. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FS     := $(BIN)/fashion-sweeps
# pytest processes for `make test` (whole test files each; every one loads torch: ~1 GB apiece).
TEST_WORKERS ?= 2

# Data for the sweep targets: `make sweep DATASET=clothing ROOT=../shared/data/clothing`, or a
# recipe (conf/experiment/), which names its data set: `make sweep EXPERIMENT=product_screen ROOT=...`.
# With neither, `make sweep|screen|full` run the clothing_screen recipe (a frozen ImageNet
# screen on the clothing photos: ROOT=../shared/data/clothing). A DATASET given on the command
# line wins over the recipe's.
DATASET ?=
ROOT    ?=
EXPERIMENT ?=
ARGS    ?=
DATA_ARGS = $(if $(DATASET),dataset=$(DATASET)) $(if $(ROOT),dataset.root=$(ROOT)) $(if $(EXPERIMENT),experiment=$(EXPERIMENT))
SWEEP_ARGS = $(DATA_ARGS) $(if $(DATASET)$(EXPERIMENT),,experiment=clothing_screen)

# The address `make server`, `make ui` and `make serve` bind: this machine only, unless the user
# names another on the command line (`make server HOST=0.0.0.0`). A HOST from the environment
# (shells and schedulers export one, often the machine's name) must not open a server to the network.
BIND := $(if $(filter command line,$(origin HOST)),$(HOST),127.0.0.1)

.PHONY: help install test test-slow test-cluster lint format demo screen full sweep train samplers product-data bench report results predict serve ui dashboard server clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install:  ## create .venv and install the package (editable) with its test tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[test,dashboard,postgres]"

test:  ## the test suite (offline, CPU, tiny data; about 7 minutes on 2 cores; TEST_WORKERS=2)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow:  ## also the long checks (real data in ../shared/data, the whole demo, killed workers)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "slow or not slow"

test-cluster:  ## the cluster tests on a local SLURM and PostgreSQL (as root: .ci/cluster up first)
	$(BIN)/pytest -q -m "cluster and not slow" --durations=0

lint:  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train:  ## one run: make train ARGS="dataset=clothing dataset.root=... backbone=resnet18"
	$(FS) train $(ARGS)

demo:  ## an offline transfer screen (frozen ImageNet EfficientNet-Lite0) and its full runs on the bundled sample
	$(FS) sweep sweep=demo $(ARGS)

screen:  ## the 24-condition screen, resumable: make screen ROOT=... ARGS="..."
	$(FS) screen $(SWEEP_ARGS) $(ARGS)

full:  ## full runs of the screen's top 4 (10 epochs, early stopping, tested)
	$(FS) full $(SWEEP_ARGS) $(ARGS)

sweep:  ## screen, then full runs of its winners (default: clothing_screen, ROOT=...); tables, report
	$(FS) sweep $(SWEEP_ARGS) $(ARGS)

samplers:  ## the sampler study: one model per sampler, side by side (DATASET, ROOT, ARGS)
	$(FS) samplers $(DATA_ARGS) $(ARGS)

product-data:  ## assemble Fashion Product Images from its two public GitHub repositories into DEST (never commit it)
	scripts/product_images.sh $(DEST)

bench:  ## speed figures side by side -> benchmarks/results.json + .md (ARGS="--size real": the engines and the 24-condition screen on all photos, ~50 min; or "--images 300")
	$(BIN)/python -m benchmarks.run $(ARGS)

report:  ## the HTML/Markdown report of a sweep (SWEEP=name, default the latest) + champion model
	$(FS) report $(SWEEP) $(ARGS)

results:  ## rewrite docs/results.md from the recipe runs in MLflow (ARGS="--run fmnist_cnn --seeds 42 7 --root fashion_mnist=PATH")
	$(FS) results $(ARGS)

predict:  ## tag photos with the champion model: make predict IMAGES=folder [ARGS="--top-k 3 --out x.csv"]
	$(FS) predict $(IMAGES) $(ARGS)

serve:  ## serve the champion model on http://127.0.0.1:5001 (MODEL=models:/...@alias to choose, HOST=)
	PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db} \
	  $(BIN)/mlflow models serve -m $(or $(MODEL),models:/fashion-classifier@champion) --env-manager local -h $(BIND) -p 5001

ui:  ## the MLflow UI on http://127.0.0.1:5000 over the local store (HOST=)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host $(BIND) --port 5000 --workers 1

# The sweep studies (hydra.sweeper.storage): an SQLite file or a journal file.
STUDIES ?= $(CURDIR)/multirun/sweeps/optuna.db
DASHBOARD_PORT ?= 8080

dashboard:  ## optuna-dashboard on http://127.0.0.1:8080 over the sweep studies (STUDIES=file)
	@test -x $(BIN)/optuna-dashboard || { echo "optuna-dashboard is an optional dependency: \
	$(BIN)/pip install -e '.[dashboard]' (or pip install 'fashion-sweeps[dashboard]')." >&2; exit 1; }
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) \
		$(if $(filter %.db,$(STUDIES)),sqlite:///$(abspath $(STUDIES)),$(abspath $(STUDIES)))

# The tracking server every worker reports to: `make server` here, `make server HOST=0.0.0.0
# ALLOWED_HOSTS=$$(hostname):5000` for compute nodes; runs then use tracking.uri=http://HOST:PORT.
PORT ?= 5000
WORKERS ?= 2
ALLOWED_HOSTS ?=
STORE ?= $(CURDIR)/mlruns
# The runs' database: SQLite in STORE, or a database server for many concurrent workers, e.g.
# BACKEND=postgresql://user:pass@dbhost/mlflow (needs `pip install -e ".[postgres]"`).
BACKEND ?= sqlite:///$(abspath $(STORE))/mlflow.db
# With WORKERS > 1, uvicorn restarts a worker that misses a 5 s health check; one still
# importing MLflow on a loaded machine misses it every time and the server never comes up.
HEALTHCHECK_S ?= 120

server:  ## MLflow tracking server on 127.0.0.1:5000 (HOST=, PORT=, BACKEND=): SQLite mlruns/mlflow.db, artifacts mlruns/artifacts
	mkdir -p $(STORE)/artifacts
	$(BIN)/mlflow server --backend-store-uri $(BACKEND) \
		--serve-artifacts --artifacts-destination $(abspath $(STORE))/artifacts \
		--host $(BIND) --port $(PORT) --workers $(WORKERS) \
		--uvicorn-opts "--timeout-worker-healthcheck $(HEALTHCHECK_S)" \
		$(if $(ALLOWED_HOSTS),--allowed-hosts $(ALLOWED_HOSTS))

clean:  ## remove run outputs and the local MLflow store (keeps the placeholders)
	find multirun mlruns -mindepth 1 ! -name README.md -exec rm -rf {} +
