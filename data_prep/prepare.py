"""A whole prep job: plan -> tokenizer -> tokenize units on Ray, packing them into shards as they
come -> manifest.

Outputs in ``data.output_dir``: the tokenizer's files (``tokenizer.model``, or ``tokenizer.json`` and
its ``tokenizer_config.json``), ``{train,val}/<source>/shard_NNNNN.{bin,idx}``,
``manifest.json``, ``config.resolved.yaml``; resumable state in ``work/``. The same inputs and
config give byte-identical outputs; a rerun after a crash redoes only the missing units and shards."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import deque
from pathlib import Path

from pipeline.config import LoadedConfig, write_resolved
from pipeline.config.job import JobConfig
from pipeline.errors import UserError
from pipeline.utils.folder_lock import RERUN_GRACE_S, folder_lock, lock_path_in
from pipeline.utils.fs import out_of_space, staged_file

from . import sentencepiece_tokenizer
from . import tokenizer as tok
from .filters import clean
from .manifest import FORMAT, ManifestError, read_manifest, write_manifest
from .pack_stage import PackStage, unit_path
from .progress import Reporter
from .ray_runtime import ActorFeed, cluster_cpus, local_cpus, ray_session
from .readers import read_unit
from .text_tokenizer import TokenizerError
from .tokenize_units import LocalTokenizer, UnitTokenizer
from .units import InputError, SourcePlan, plan

JOB_NAME = "job.json"


class PrepError(UserError):
    """A prep job that cannot start; the message names the config key or file."""


# Keys added after prepared folders existed, each with the value that reproduces what those folders
# hold: a key at that value stays out of the fingerprint, so those folders stay valid; a folder
# whose job lacks the key was prepared with that value.
ADDED_LATER = {"data.control_chars": "keep", "tokenizer.eod_token": None}


def _fingerprint_sections(cfg: JobConfig) -> dict:
    """What determines the output bytes (not where Ray runs, nor how many workers)."""
    data = cfg.data.model_dump(mode="json", exclude={"ray_address", "num_workers", "output_dir"})
    sections = {
        "data": data,
        "tokenizer": cfg.tokenizer.model_dump(mode="json"),
        "packing": cfg.packing.model_dump(mode="json"),
        "seed": cfg.run.seed,
    }
    for key, value in ADDED_LATER.items():
        section, name = key.split(".")
        if sections[section].get(name) == value:
            del sections[section][name]
    return sections


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        flat.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return flat


def _claim_output(work: Path, cfg: JobConfig) -> None:
    """Refuse to resume into an output folder that holds a different job."""
    sections = _fingerprint_sections(cfg)
    path = work / JOB_NAME
    if path.exists():
        before = json.loads(path.read_text())
        if before != sections:
            old, new = _flatten(before), _flatten(sections)
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            older = [f"{k}: {ADDED_LATER[k]}" for k in changed if k in ADDED_LATER and k not in old]
            hint = f", or set {' and '.join(older)} to use it as it was prepared" if older else ""
            raise PrepError(
                f"data.output_dir: {work.parent} holds a prep job with a different config "
                f"(changed: {', '.join(changed[:8])}); use another output_dir or delete this one{hint}"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sections, indent=1))


def _sample_documents(plans: list[SourcePlan], cfg: JobConfig) -> list[str]:
    """Up to tokenizer.sample_docs kept documents, drawn from units in a seeded random order."""
    units = [u for p in plans for u in p.units]
    random.Random(cfg.run.seed).shuffle(units)
    sample: list[str] = []
    for unit in units:
        field = getattr(cfg.data.sources[unit.source], "text_field", "text")
        for record in read_unit(unit, field):
            if record.text is not None:
                text, reason, _ = clean(record.text, cfg.data)
                if reason is None:
                    sample.append(text)
                    if len(sample) >= cfg.tokenizer.sample_docs:
                        return sample
    return sample


def _tokenizer(plans, cfg: JobConfig, out: Path, reporter: Reporter) -> tok.TokenizerInfo:
    """The tokenizer's files copied (given) or trained into ``out``, described."""
    path = out / sentencepiece_tokenizer.MODEL_NAME
    if cfg.tokenizer.model_path:
        try:
            tok.copy_files(cfg.tokenizer.model_path, out)
        except TokenizerError as exc:
            raise PrepError(f"tokenizer.model_path: {exc}") from None
    elif not path.exists():
        with reporter.phase("training tokenizer"):
            sample = _sample_documents(plans, cfg)
            if not sample:
                raise PrepError("data.sources: no document passes the filters; nothing to train a tokenizer on")
            try:
                with staged_file(path) as tmp:
                    sentencepiece_tokenizer.train(cfg.tokenizer, sample, cfg.run.seed, tmp)
            except RuntimeError as exc:  # sentencepiece explains what to change
                raise PrepError(f"tokenizer: sentencepiece training failed: {str(exc).split('] ')[-1]}") from None
    try:
        info = tok.describe(out, cfg.tokenizer.eod_token)
    except TokenizerError as exc:
        raise PrepError(f"tokenizer.model_path: {exc}") from None
    if info.eos_id < 0:
        raise PrepError(
            f"tokenizer.model_path: {out / info.path} has no EOS piece, needed as the end-of-document token; "
            "set tokenizer.eod_token"
        )
    return info


def _tokenize_units(todo: deque, cfg: JobConfig, dtype, out: Path, work: Path) -> ActorFeed:
    """Start Ray actors (one per CPU, or data.num_workers) tokenizing the units of ``todo``;
    iterating the feed yields each unit's summary as it is saved."""
    import ray

    workers = min(cfg.data.num_workers or cluster_cpus(), len(todo))
    actor = ray.remote(num_cpus=1)(UnitTokenizer)
    data_json = cfg.data.model_dump_json()
    actors = [actor.remote(str(out.resolve()), cfg.tokenizer.eod_token, data_json, dtype.name) for _ in range(workers)]
    return ActorFeed(actors, lambda a, u: a.run.remote(u.to_dict(), str(unit_path(work, u.key).resolve())), todo)


def prepare(loaded: LoadedConfig, reporter: Reporter | None = None) -> dict:
    """Run (or resume) the prep job of ``loaded``; returns the manifest. The output folder is locked
    for the job's life: a second prep (or a run writing it) on the same folder is refused."""
    with folder_lock(lock_path_in(loaded.config.data.output_dir), "parscale prep", RERUN_GRACE_S):
        return _prepare(loaded, reporter)


def _prepare(loaded: LoadedConfig, reporter: Reporter | None = None) -> dict:
    cfg = loaded.config
    reporter = reporter or Reporter()
    out = Path(cfg.data.output_dir)
    work = out / "work"
    started = time.perf_counter()
    try:  # everything that can be refused is refused before any work starts
        plans = plan(cfg.data)
        if cfg.tokenizer.model_path:
            tok.locate(cfg.tokenizer.model_path)
        else:
            tok.token_dtype(cfg.tokenizer.vocab_size, cfg.packing.token_dtype)
    except TokenizerError as exc:
        raise PrepError(f"tokenizer.model_path: {exc}") from None
    except (InputError, ValueError) as exc:
        raise PrepError(str(exc)) from None
    _claim_output(work, cfg)
    info = _tokenizer(plans, cfg, out, reporter)
    try:
        dtype = tok.token_dtype(info.vocab_size, cfg.packing.token_dtype)
    except ValueError as exc:
        raise PrepError(str(exc)) from None

    try:
        sources = _tokenize_and_pack(plans, cfg, info, dtype, out, work, reporter)
    except Exception as exc:  # Ray wraps a worker's OSError: out_of_space looks through the wrapping
        if out_of_space(exc, out):
            raise PrepError(
                f"no space left on device: {out}; free space and rerun 'parscale prep': finished "
                "units and shards are kept and not redone"
            ) from None
        raise

    manifest = {
        "format": FORMAT,
        "tokenizer": info.to_dict(),
        "token_dtype": dtype.name,
        "seq_len": cfg.packing.seq_len,
        "row_len": cfg.packing.seq_len + 1,
        "packing": cfg.packing.strategy,
        "sources": sources,
        "totals": _totals(sources, cfg.packing.seq_len + 1),
        "config": cfg.model_dump(mode="json"),
        "config_sha256": config_sha256(cfg),
    }
    write_manifest(out, manifest)
    write_resolved(loaded, out)
    reporter.summary(manifest, time.perf_counter() - started, out)
    if manifest["totals"]["documents_kept"] == 0:
        raise PrepError(
            f"data.sources: every document was rejected; the reasons are counted in {out / 'manifest.json'}"
        )
    return manifest


def _tokenize_and_pack(plans, cfg: JobConfig, info, dtype, out: Path, work: Path, reporter: Reporter) -> list[dict]:
    """Tokenize the units not done yet (on Ray, and in a thread of this process while Ray starts)
    and meanwhile pack every unit in plan order as soon as it and those before it are done; the
    sources' manifest entries."""
    units = [u for p in plans for u in p.units]
    done = {u.key for u in units if unit_path(work, u.key).exists()}
    todo = deque(u for u in units if u.key not in done)
    total = sum(u.size for u in units)
    (work / "units").mkdir(parents=True, exist_ok=True)
    seen: set[int] | None = set() if cfg.data.dedup else None
    specs = [("tokenizing", total, total - sum(u.size for u in todo)), ("packing", total, 0)]
    with reporter.bars(*specs) as (tokenized, packed):
        stage = PackStage(plans, cfg, out, work, dtype, seen, packed)
        if not todo:
            stage.ready(done)
            return stage.finish()

        def finished(summaries: list[dict]) -> None:
            for summary in summaries:
                tokenized(summary["bytes"], tokens=summary["tokens"])
            stage.ready(s["key"] for s in summaries)

        args = (str(out.resolve()), cfg.tokenizer.eod_token, cfg.data.model_dump_json(), dtype.name)
        local = LocalTokenizer(*args, todo, lambda u: str(unit_path(work, u.key).resolve()))
        try:
            with ray_session(cfg.data.ray_address, cfg.data.num_workers or local_cpus()):
                feed = _tokenize_units(todo, cfg, dtype, out, work)
                stage.ready(done)  # what an earlier run finished, packed while the actors start
                for summary in feed:
                    local.stop()  # the actors are up: they have the CPUs
                    finished([summary, *local.results()])
        finally:
            local.stop()
        finished(local.results(wait=True))
        return stage.finish()


def config_sha256(cfg: JobConfig) -> str:
    return hashlib.sha256(json.dumps(_fingerprint_sections(cfg), sort_keys=True).encode()).hexdigest()


def is_complete(cfg: JobConfig) -> bool:
    """The output folder holds a finished job with exactly this config."""
    try:
        return read_manifest(cfg.data.output_dir).get("config_sha256") == config_sha256(cfg)
    except ManifestError:
        return False


def _totals(sources: list[dict], row_len: int) -> dict:
    totals: dict = {
        "documents_read": 0,
        "documents_kept": 0,
        "documents_rejected": 0,
        "rejected_by_reason": {},
        "stripped_by_filter": {},
    }
    for split in ("train", "val"):
        totals[split] = {k: 0 for k in ("rows", "tokens", "padding", "truncated_documents")}
    for src in sources:
        totals["documents_read"] += src["documents"]["read"]
        totals["documents_kept"] += src["documents"]["kept"]
        totals["documents_rejected"] += src["documents"]["rejected"]
        for reason, n in src["rejected"]["counts"].items():
            totals["rejected_by_reason"][reason] = totals["rejected_by_reason"].get(reason, 0) + n
        for name, n in src["stripped"]["counts"].items():
            totals["stripped_by_filter"][name] = totals["stripped_by_filter"].get(name, 0) + n
        for split in ("train", "val"):
            for k in totals[split]:
                totals[split][k] += src["splits"][split][k]
    for split in ("train", "val"):
        rows = totals[split]["rows"]
        totals[split]["padding_fraction"] = totals[split]["padding"] / (rows * row_len) if rows else 0.0
    totals["rejected_by_reason"] = dict(sorted(totals["rejected_by_reason"].items()))
    totals["stripped_by_filter"] = dict(sorted(totals["stripped_by_filter"].items()))
    return totals
