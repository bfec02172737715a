"""Uploading an exported LVLM folder to the Hub."""

from __future__ import annotations

import os


class HubPushError(RuntimeError):
    """Pushing to the Hub failed; the export itself is complete on disk."""


def push_folder(folder: str, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Upload `folder` (weights, config, processor, model card) to `repo_id`; a `HubPushError` with the fix on failure."""
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(repo_id=repo.repo_id, folder_path=folder, commit_message="LVLM with an MMT-ARD robust tower")
        return repo.url if hasattr(repo, "url") else str(repo)
    except Exception as err:  # offline, no token, no permission: all end the same way
        raise HubPushError(
            f"Could not push to the Hub as {repo_id!r} ({type(err).__name__}: {err}). Nothing is lost: the export is "
            f"complete in {os.path.abspath(folder)!r}; push it later with `hf upload {repo_id} {folder}`."
        ) from err
