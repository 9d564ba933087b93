# Deployment checks (included by the root Makefile).
#   make deploy-tools     install the pinned tools the deploy tests need that are not in uv.lock
#   make deploy-validate  render every overlay, validate it (kubernetes-validate, checkov), run
#                         each service as its dev manifest says, check the observability files
# checkov is installed as an isolated uv tool under .tools/ so the workspace lock stays as it is.

CHECKOV_VERSION ?= 3.3.30
DEPLOY_TOOLS_DIR := $(CURDIR)/.tools
DEPLOY_UV := $(or $(UV),uv)
DEPLOY_PY := $(or $(PY),.venv/bin/python)

.PHONY: deploy-tools deploy-validate

deploy-tools: $(DEPLOY_TOOLS_DIR)/bin/checkov ## install checkov (pinned) under .tools/

# Reinstalled when this file (the pin) changes.
$(DEPLOY_TOOLS_DIR)/bin/checkov: mk/deploy.mk
	UV_TOOL_DIR=$(DEPLOY_TOOLS_DIR)/uv UV_TOOL_BIN_DIR=$(DEPLOY_TOOLS_DIR)/bin UV_PYTHON_DOWNLOADS=never \
		$(DEPLOY_UV) tool install --force --python 3.11 checkov==$(CHECKOV_VERSION)
	@touch $@

test-tools:: deploy-tools

deploy-validate: deploy-tools ## validate deploy/ (render, schemas, checkov, services run as manifested)
	$(DEPLOY_PY) -m pytest tests/deploy -q $(PYTEST_ARGS)
