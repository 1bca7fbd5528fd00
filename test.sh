#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs them offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q -r requirements.txt -r requirements-test.txt
if [ ! -x /usr/bin/chromium ]; then  # the browser test drives Debian's Chromium (no browser download)
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium"
fi
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
python3 -m pytest -q "$@"
