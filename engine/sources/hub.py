"""The Hugging Face Hub as this process sees it: online, or offline (decided once at start and passed in).

Every Hub call of the engine goes through `Hub` (models, single-file configs, LoRA files), with
`local_files_only` set from that one decision, and every Hub failure becomes one line in `Hub.explain`,
naming what was wanted and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..families import family as family_of
from ..families import has_variants
from ..request import ModelError, UserError
from .checkpoint import family_of_folder, variant_of_folder

log = logging.getLogger(__name__)
MAX_ID_LENGTH = 96  # the Hub's limit for namespace/name


class Hub:
    def __init__(self, offline: bool = False, why: str = ""):
        self.offline = offline
        self.why = why or ("HF_HUB_OFFLINE is set" if offline else "")

    # ---------------------------------------------------------------------------------- messages
    def explain(self, e: Exception, what: str, repo: str, fetch: str = "", missing: str = "",
                not_cached: str = "") -> UserError:
        """One line for a failed Hub call: `what` is wanted from `repo`; `fetch` says how to get it by hand;
        `missing` replaces the message for a repo that lacks the file, `not_cached` the one for offline."""
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        fetch = fetch or f"`python app.py models --download {repo}` (or `hf download {repo}`)"
        if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            if not_cached:
                return UserError(not_cached)
            why = self.why or "the Hub cannot be reached"
            return ModelError(f"{what} is not in the local Hugging Face cache and this app runs offline ({why}). "
                              "Pick a model that is here (the model list), or ask the app's operator to fetch it.",
                              operator=f"Connect once and run {fetch}.")
        if isinstance(e, GatedRepoError):
            return UserError(f"{repo} is gated: accept its licence on huggingface.co and set HF_TOKEN.")
        if isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)):
            return UserError(f"There is no repo {repo!r} on the Hugging Face Hub (or it is private: set HF_TOKEN). "
                             "Check the id.")
        if isinstance(e, EntryNotFoundError) or type(e).__name__ == "RemoteEntryNotFoundError":
            return UserError(missing or f"{repo} has no {what}. Check the repo and file name.")
        if isinstance(e, HFValidationError):
            return UserError(f"{repo!r} is not a valid Hub id (expected 'namespace/name', at most {MAX_ID_LENGTH} "
                             "characters of letters, digits, '-', '_' and '.').")
        return UserError(f"Could not reach the Hub for {repo!r} ({type(e).__name__}: {_first_line(e)}). Check the "
                         "network, or set HF_HUB_OFFLINE=1 to use cached files only.")

    def refuse_download(self) -> None:
        if self.offline:
            raise UserError(f"This app runs offline ({self.why}), so nothing can be downloaded. "
                            + ("Unset HF_HUB_OFFLINE and run the command again." if "HF_HUB_OFFLINE" in self.why
                               else "Check the network and run the command again."))

    # ------------------------------------------------------------------------------------- calls
    def file(self, repo: str, filename: str, what: str, fetch: str = "", missing: str = "") -> Path:
        """A file of a Hub repo: from the cache, or downloaded when online."""
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo, filename, local_files_only=self.offline))
        except (OSError, ValueError) as e:
            raise self.explain(e, what, repo, fetch, missing) from None

    def snapshot(self, repo: str, patterns: list[str], what: str, not_cached: str = "") -> Path:
        """The files of `repo` matching `patterns`, as a local folder."""
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=self.offline))
        except (OSError, ValueError) as e:
            raise self.explain(e, what, repo, not_cached=not_cached) from None

    def family(self, repo: str) -> tuple[str, str]:
        """(family, variant) of a Hub pipeline, from its model_index.json (and, for Flux, the transformer config)."""
        fetch = (f"`python app.py models --download {repo}` (or `hf download {repo}`), or pick a cached model from "
                 "`python app.py models`")
        folder = self.file(repo, "model_index.json", f"Model {repo!r}", fetch,
                           missing=f"{repo} is not a diffusers pipeline (no model_index.json). Use a diffusers repo "
                                   "or a .safetensors file.").parent
        family = family_of_folder(folder)
        if not has_variants(family):
            return family, ""
        for file, *_ in family_of(family).config_variants:  # fetched beside model_index.json, when there
            if file != "model_index.json":
                try:
                    self.file(repo, file, f"the {file} of {repo}")
                except UserError:
                    pass
        return family, variant_of_folder(family, folder)

    def download(self, repo: str) -> str:
        """Fetch only the files a Hub pipeline needs (safetensors weights, configs) into the Hugging Face cache."""
        self.refuse_download()  # offline: at once, before diffusers is imported (seconds)
        family, _ = self.family(repo)
        from diffusers import DiffusionPipeline

        try:
            path = DiffusionPipeline.download(repo, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise self.explain(e, "the pipeline's weights", repo) from None
        log.info("downloaded %s (%s) to %s", repo, family, path)
        return str(path)


def cached_hub_models() -> list[tuple[str, str]]:
    """(repo id, family) of diffusers pipelines in the local Hugging Face cache (no network)."""
    from huggingface_hub import scan_cache_dir

    out = []
    try:
        info = scan_cache_dir()
    except Exception:  # no cache folder yet
        return out
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            index = next((f for f in rev.files if f.file_name == "model_index.json"), None)
            if index is not None:
                try:
                    out.append((repo.repo_id, family_of_folder(Path(index.file_path).parent)))
                except UserError:
                    pass  # a pipeline class we don't run; not listed
                break
    return out


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
