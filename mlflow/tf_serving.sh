#!/usr/bin/env bash
# Entry point of the tf-serving service in mlflow/compose.yaml: TF Serving for every model
# exported under $MODELS_DIR (exports/ mounted at /models), through a model config file.
#
#   tf_serving.sh [tensorflow_model_server flags ...]   write the config, then run the server
#   tf_serving.sh --print-config [EXPORTS_DIR]          print the config it would serve (tests)
#
# A model is a folder <name>/ holding at least one <version>/saved_model.pb; it is served as
# <name> (REST: /v1/models/<name>:predict), newest version. The config is rewritten every
# $MODEL_CONFIG_POLL_SECONDS and TF Serving re-reads it as often, so models exported later
# are picked up without a restart. $MODELS_DIR/models.config, when present, is served
# unchanged instead (a hand-written list).
set -euo pipefail

MODELS_DIR=${MODELS_DIR:-/models}
CONFIG=${MODEL_CONFIG_FILE:-/tmp/models.config}
POLL=${MODEL_CONFIG_POLL_SECONDS:-30}

model_config() {  # the model_config_list for the exports under $1
  local dir=${1%/} base name
  echo "model_config_list {"
  for base in "$dir"/*/; do
    base=${base%/}
    name=${base##*/}
    if compgen -G "$base/[0-9]*/saved_model.pb" >/dev/null; then
      printf '  config {\n    name: "%s"\n    base_path: "%s"\n    model_platform: "tensorflow"\n  }\n' \
        "$name" "$base"
    fi
  done
  echo "}"
}

if [ "${1:-}" = "--print-config" ]; then
  model_config "${2:-$MODELS_DIR}"
  exit 0
fi

if [ -f "$MODELS_DIR/models.config" ]; then
  CONFIG=$MODELS_DIR/models.config
  echo "tf_serving.sh: serving the models listed in $CONFIG"
else
  write_config() { model_config "$MODELS_DIR" >"$CONFIG.tmp" && mv -f "$CONFIG.tmp" "$CONFIG"; }
  write_config
  if grep -q 'name:' "$CONFIG"; then
    echo "tf_serving.sh: serving $(grep -o 'name: "[^"]*"' "$CONFIG" | cut -d'"' -f2 | tr '\n' ' ')"
  else
    echo "tf_serving.sh: no export under $MODELS_DIR yet (run cnn-apps export); checking every ${POLL} s"
  fi
  (while sleep "$POLL"; do write_config; done) &
fi

exec tensorflow_model_server --port=8500 --rest_api_port=8501 \
  --model_config_file="$CONFIG" --model_config_file_poll_wait_seconds="$POLL" "$@"
