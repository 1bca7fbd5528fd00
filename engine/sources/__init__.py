"""Where models come from: `--model` strings resolved to a Source (resolve.py), what a checkpoint file is
(checkpoint.py: header, pickle refusal, family), the Hub with the process's offline decision (hub.py, network.py),
single `.safetensors` files (single_file.py), and loading plus the cache of loaded pipelines (loading.py)."""
