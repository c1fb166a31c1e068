# cxr-lightning. `make help` lists the targets.
#
# A full reproduction on real data:  make tables NIH_ROOT=/data/nih GPUS=8 [FAST=1]
# The same plumbing in minutes on the CPU, on synthetic data:  make tables SMOKE=1
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLI := $(BIN)/cxr-lightning

NIH_ROOT ?= data/nih
GPUS ?= 1
NODES ?= 1
STRATEGY ?= auto
PRECISION ?=
WANDB_PROJECT ?= cxr-lightning
BOOTSTRAP ?= 2000
# SEEDS=3 trains each row with training seeds 0, 1, 2 into OUT/<row>/seed<k>/ (the split stays the
# config's); the report shows the mean +- sd over the seeds and tests models with every seed.
SEEDS ?=
SEED_LIST := $(if $(SEEDS),$(shell seq 0 $$(( $(SEEDS) - 1 ))))

# Every run of the paper's tables, one per config in configs/, then the imbalance methods.
PAPER_RUNS := cnn resnet_linear resnet_log resnet_log_conv beit_model1 beit_model2 beit_model3 beit_model4 beit_model5
IMBALANCE_RUNS := resnet_log_focal resnet_asl resnet_log_oversample
# Other backbones beside the paper's rows: CheXNet's DenseNet-121 and a chest-X-ray-pretrained one.
BACKBONE_RUNS := chexnet xrv_densenet121_chex
RUNS := $(PAPER_RUNS) $(IMBALANCE_RUNS) $(BACKBONE_RUNS)

# Explanations of the best model of each kind, scored against bounding boxes.
EXPLAIN_RUNS := cnn resnet_log_conv beit_model4

ifeq ($(SMOKE),1)
OUT ?= runs/smoke
BOXES := data/smoke/BBox_List_2017.csv
EXPLAIN_IMAGES := data/smoke/images
EXPLAIN_DEVICE := cpu
RUN_ARGS := --config configs/smoke.yaml
# Per model family: random weights and a tiny BEiT, since nothing can be downloaded.
SMOKE_cnn := --model.channels='[8, 16, 16, 32, 32]'
SMOKE_resnet := --model.weights=null
SMOKE_chexnet := --model.weights=null
SMOKE_xrv := --model.weights=null
SMOKE_beit := --model.config='{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 64, "patch_size": 16}'
else
OUT ?= runs
BOXES := nih
EXPLAIN_IMAGES := $(NIH_ROOT)/images
EXPLAIN_DEVICE ?= cuda
RUN_ARGS := $(if $(filter 1,$(FAST)),--config configs/fast.yaml) --data.data_root=$(NIH_ROOT) --trainer.devices=$(GPUS) \
	--trainer.num_nodes=$(NODES) --trainer.strategy=$(STRATEGY) $(if $(PRECISION),--trainer.precision=$(PRECISION))
endif
family = $(firstword $(subst _, ,$(1)))

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: NIH_ROOT=$(NIH_ROOT) GPUS=$(GPUS) NODES=$(NODES) STRATEGY=$(STRATEGY) PRECISION=$(PRECISION) FAST=$(FAST)"
	@echo "             WANDB_PROJECT=$(WANDB_PROJECT) OUT=$(OUT) SMOKE=$(SMOKE) BOOTSTRAP=$(BOOTSTRAP) SEEDS=$(SEEDS)"

# The virtual environment is (re)built when missing or when pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its test tools

test: $(STAMP) ## run the whole test suite
	$(BIN)/python -m pytest -q

demo: $(STAMP) ## train and test the paper's CNN on embedded synthetic data (CPU, about a minute after the install)
	$(CLI) fit --config configs/demo.yaml

download: $(STAMP) ## download and extract the NIH images into NIH_ROOT (about 45 GB)
	$(CLI) data download --data_root $(NIH_ROOT)

prepare: $(STAMP) ## decode NIH_ROOT's images once into uint8 caches at 224 and 1024 pixels (for FAST=1)
	$(CLI) data prepare --data_root $(NIH_ROOT) --image_size 224
	$(CLI) data prepare --data_root $(NIH_ROOT) --image_size 1024

# One run: fit, tune thresholds on validation, test the best checkpoint. make's own
# dependency tracking skips a run whose metrics.json is newer than its config.
$(OUT)/%/metrics.json: configs/%.yaml $(if $(filter 1,$(SMOKE)),configs/smoke.yaml) | $(STAMP)
	$(CLI) fit --config $< $(RUN_ARGS) $(SMOKE_$(call family,$*)) --test_after_fit=true \
		--trainer.default_root_dir=$(@D) --trainer.logger.init_args.project=$(WANDB_PROJECT)

# One seed of a row (SEEDS=N): the same run with seed_everything and data.training_seed set to k.
define seeded_run
$(OUT)/$(1)/seed$(2)/metrics.json: configs/$(1).yaml $(if $(filter 1,$(SMOKE)),configs/smoke.yaml) | $(STAMP)
	$(CLI) fit --config configs/$(1).yaml $(RUN_ARGS) $(SMOKE_$(call family,$(1))) --test_after_fit=true \
		--seed_everything=$(2) --data.training_seed=$(2) --trainer.default_root_dir=$$(@D) \
		--trainer.logger.init_args.project=$(WANDB_PROJECT) --trainer.logger.init_args.name=$(1)-seed$(2)
endef
$(foreach run,$(RUNS),$(foreach k,$(SEED_LIST),$(eval $(call seeded_run,$(run),$(k)))))

# A row's outputs: its one run, or one run per seed.
run_outputs = $(if $(SEEDS),$(foreach k,$(SEED_LIST),$(OUT)/$(1)/seed$(k)/metrics.json),$(OUT)/$(1)/metrics.json)
$(foreach run,$(RUNS),$(eval $(run): $(call run_outputs,$(run))))

cnn: ## Table 3 "Baseline (CNN)": the CNN from scratch
resnet_linear: ## Table 1 / Table 5: ResNet-50, linear weights
resnet_log: ## Table 1 / Table 6: ResNet-50, log weights
resnet_log_conv: ## Table 1 / Table 7 / Table 3 "ResNet": log weights + conv input layers (1024x1024)
beit_model1: ## Table 2 model 1: BEiT transfer learning (frozen), log weights, metadata MLP
beit_model2: ## Table 2 model 2: BEiT fine-tuned, warm-up scheduler, unweighted
beit_model3: ## Table 2 model 3: BEiT fine-tuned, no scheduler, log weights
beit_model4: ## Table 2 model 4 / Table 3 "BEiT": fine-tuned, warm-up scheduler, log weights
beit_model5: ## Table 2 model 5: fine-tuned, warm-up scheduler, log weights, metadata MLP
resnet_log_focal: ## beyond the paper: ResNet-50, log weights + focal loss
resnet_asl: ## beyond the paper: ResNet-50, asymmetric loss
resnet_log_oversample: ## beyond the paper: ResNet-50, log weights + rare-finding oversampling
chexnet: ## beyond the paper: CheXNet's DenseNet-121 by its public reproduction's recipe, on the paper split
xrv_densenet121_chex: ## beyond the paper: torchxrayvision's CheXpert-pretrained DenseNet-121, fine-tuned

table1: resnet_linear resnet_log resnet_log_conv ## Table 1: the three ResNet-50 rows
table2: beit_model1 beit_model2 beit_model3 beit_model4 beit_model5 ## Table 2: the five BEiT rows
table3: cnn resnet_log_conv beit_model4 ## Table 3: CNN, best ResNet, best BEiT
table5: resnet_linear ## Table 5: linear weights, 0.5 vs tuned thresholds
table6: resnet_log ## Table 6: log weights, 0.5 vs tuned thresholds
table7: resnet_log_conv ## Table 7: log weights + conv input layers, 0.5 vs tuned thresholds
imbalance: resnet_log $(IMBALANCE_RUNS) ## the imbalance methods beyond the paper, against log weights
backbones: $(BACKBONE_RUNS) ## CheXNet's DenseNet-121 and a chest-X-ray-pretrained DenseNet-121

# Grad-CAM of the best checkpoint on every boxed image; pointing game and energy in the box per label.
$(OUT)/%/explain/localization.csv: $(OUT)/%/metrics.json
	$(CLI) explain --ckpt_path $(OUT)/$*/checkpoints/best.ckpt --images $(EXPLAIN_IMAGES) \
		--boxes $(BOXES) --boxed_only --device $(EXPLAIN_DEVICE) --out $(@D) --no_progress

# With SEEDS, the first seed's model is explained.
explain_dir = $(OUT)/$(1)$(if $(SEEDS),/seed0)
explain: $(foreach run,$(EXPLAIN_RUNS),$(call explain_dir,$(run))/explain/localization.csv) ## Grad-CAM localisation of the three best models on the bounding boxes

table4: | $(STAMP) ## Table 4 (Appendix D): class prevalence per split, from the metadata (no training)
	@mkdir -p $(OUT)
	$(CLI) data stats --split paper --out $(OUT)/table4.md
	@cat $(OUT)/table4.md

tables: $(RUNS) table4 explain ## every table and the imbalance runs (runs already done are kept), then the report
	$(MAKE) --no-print-directory report

report: | $(STAMP) ## OUT/report.md: the paper's tables, ours [95% CI] beside the paper's, tests, calibration, figures
	$(CLI) report --runs $(OUT) --out $(OUT)/report.md --bootstrap $(BOOTSTRAP)

bench: $(STAMP) ## CPU benchmarks: loading (needs NIH PNGs in NIH_ROOT/images), pipeline, train steps, reproduction time
	$(BIN)/python benchmarks/loader_throughput.py --images $(NIH_ROOT)/images
	$(BIN)/python benchmarks/pipeline_throughput.py
	$(BIN)/python benchmarks/train_step_throughput.py
	$(BIN)/python benchmarks/reproduction_time.py --batch_size 8 --warmup 2 --steps 4

bench-gpu: $(STAMP) ## every GPU measurement in one run (one summary table; sized for under 8 minutes on one H100, not yet timed there)
	$(BIN)/python benchmarks/gpu_all.py

clean: ## remove the virtual environment, caches and run outputs
	rm -rf $(VENV) .pytest_cache runs data/demo data/smoke *.egg-info

.PHONY: help install test demo download prepare $(RUNS) table1 table2 table3 table4 table5 table6 table7 imbalance backbones explain tables report bench bench-gpu clean
