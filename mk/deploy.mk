# Deployment (included by the root Makefile).
#   make manifests        render every declared service's Kubernetes pieces into deploy/generated/
#                         (git-ignored; the overlays include it): deploy/render.py
#   make image SERVICE=x  build one service's image from deploy/Dockerfile (needs a Docker engine)
#   make deploy-tools     install the pinned tools the deploy tests need that are not in uv.lock
#   make deploy-validate  render every overlay, validate it (kubernetes-validate, checkov), run
#                         each service as its dev manifest says, check the observability files
# checkov is installed as an isolated uv tool under .tools/ so the workspace lock stays as it is.

CHECKOV_VERSION ?= 3.3.30
DEPLOY_TOOLS_DIR := $(CURDIR)/.tools
DEPLOY_UV := $(or $(UV),uv)
DEPLOY_PY := $(or $(PY),.venv/bin/python)

IMAGE_TAG ?= dev

.PHONY: manifests image deploy-tools deploy-validate

manifests: ## render deploy/generated/ from the service declarations
	$(DEPLOY_PY) deploy/render.py

image: ## build a service image: make image SERVICE=points [IMAGE_TAG=dev]
	@test -n "$(SERVICE)" || { echo "usage: make image SERVICE=<name>"; exit 2; }
	docker build -f deploy/Dockerfile --build-arg SERVICE=$(SERVICE) -t kizuna/$(SERVICE):$(IMAGE_TAG) .

deploy-tools: $(DEPLOY_TOOLS_DIR)/bin/checkov ## install checkov (pinned) under .tools/

# Reinstalled when this file (the pin) changes.
$(DEPLOY_TOOLS_DIR)/bin/checkov: mk/deploy.mk
	UV_TOOL_DIR=$(DEPLOY_TOOLS_DIR)/uv UV_TOOL_BIN_DIR=$(DEPLOY_TOOLS_DIR)/bin UV_PYTHON_DOWNLOADS=never \
		$(DEPLOY_UV) tool install --force --python 3.11 checkov==$(CHECKOV_VERSION)
	@touch $@

test-tools:: deploy-tools

deploy-validate: deploy-tools manifests ## validate deploy/ (render, schemas, checkov, services run as manifested)
	$(DEPLOY_PY) -m pytest tests/deploy -q $(PYTEST_ARGS)
