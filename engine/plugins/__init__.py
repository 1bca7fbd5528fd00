"""Plugins: manifests and where a plugin's file is (manifests.py), what a LoRA file is (lora_files.py), the
adapters loaded per pipeline (adapters.py), fusing (fusing.py), and `PluginManager`, which applies a request's
LoRAs (manager.py)."""
