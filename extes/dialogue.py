"""The dialogue schema and its readers and writers.

One schema for every source: a `Dialogue` has an id, a source, a scene, a description, turns and
free metadata; a `Turn` has a role (`user` | `assistant`), text, an optional strategy and metadata.

Readers (format detected by content, not by file name):
- ExTES JSON: a list of {"scene", "description", "content": [{"User": ...} | {"AI": ..., "AI Strategy": ...}]}
  tolerating "AI strategy", an "AI" value that is a dict holding text and strategy, and no strategy.
- ESConv JSON: a list of {"problem_type", "situation", "dialog": [{"speaker", "content", "annotation"}]}
  with speakers seeker/supporter (ESConv.json) or speaker/listener (the released failed conversations).
- Our JSONL: one `Dialogue.to_dict()` per line.
Writers: our JSONL (lossless round trip) and ExTES JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extes.taxonomy import UnknownLabelError, detect_taxonomy, format_strategy_tag, normalize_strategy

ROLES = ("user", "assistant")

DEFAULT_SYSTEM_PROMPT = (
    "You are a warm, patient emotional-support companion. Listen closely, reflect and validate what "
    "the person feels, ask gentle questions to understand their situation, and only then offer hope, "
    "other perspectives and small practical suggestions. Keep replies short and specific. You are not a "
    "therapist and never diagnose; if someone may be in danger, encourage them to contact local "
    "emergency services or a crisis line."
)


class DataError(ValueError):
    """Bad dialogue input: the message names the file, the record and the reason."""


@dataclass
class Turn:
    role: str
    text: str
    strategy: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "text": self.text, "strategy": self.strategy}
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        return cls(role=d["role"], text=d["text"], strategy=d.get("strategy"), meta=dict(d.get("meta") or {}))


@dataclass
class Dialogue:
    id: str
    source: str
    scene: str
    description: str
    turns: list[Turn]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "scene": self.scene,
            "description": self.description,
            "turns": [t.to_dict() for t in self.turns],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dialogue:
        return cls(
            id=str(d["id"]),
            source=d.get("source", ""),
            scene=d.get("scene", ""),
            description=d.get("description", ""),
            turns=[Turn.from_dict(t) for t in d["turns"]],
            meta=dict(d.get("meta") or {}),
        )

    @property
    def strategies(self) -> list[str]:
        return [t.strategy for t in self.turns if t.role == "assistant" and t.strategy]

    def to_extes(self) -> dict[str, Any]:
        content: list[dict[str, str]] = []
        for t in self.turns:
            if t.role == "user":
                content.append({"User": t.text})
            else:
                item = {"AI": t.text}
                if t.strategy:
                    item["AI Strategy"] = t.strategy
                content.append(item)
        return {"scene": self.scene, "description": self.description, "content": content}


def to_chat_messages(
    dialogue: Dialogue,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    strategies: bool = False,
    with_scene: bool = False,
) -> list[dict[str, str]]:
    """OpenAI-style messages for a dialogue. With `strategies`, each assistant message starts with
    its strategy tag (`[Emotional Validation] ...`, see extes.taxonomy.format_strategy_tag); with
    `with_scene`, the scene and description are appended to the system prompt."""
    messages: list[dict[str, str]] = []
    system = system_prompt or ""
    if with_scene and (dialogue.scene or dialogue.description):
        system = (system + "\n\n" if system else "") + f"Topic: {dialogue.scene}. Situation: {dialogue.description}"
    if system:
        messages.append({"role": "system", "content": system})
    for t in dialogue.turns:
        content = t.text
        if strategies and t.role == "assistant":
            content = format_strategy_tag(t.strategy or "Others") + content
        messages.append({"role": t.role, "content": content})
    return messages


# ----------------------------------------------------------------------------------------------------------
# Reading


def _clean(text: Any) -> str:
    return str(text).strip() if text is not None else ""


def _stable_id(prefix: str, payload: Any) -> str:
    h = hashlib.sha1(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]
    return f"{prefix}-{h}"


def merge_consecutive_turns(turns: list[Turn]) -> list[Turn]:
    merged: list[Turn] = []
    for t in turns:
        if merged and merged[-1].role == t.role:
            prev = merged[-1]
            prev.text = f"{prev.text} {t.text}".strip()
            prev.strategy = prev.strategy or t.strategy
            if t.strategy and t.strategy != prev.strategy:
                prev.meta.setdefault("merged_strategies", [prev.strategy]).append(t.strategy)
        else:
            merged.append(Turn(t.role, t.text, t.strategy, dict(t.meta)))
    return merged


def _extes_record(rec: Any, where: str, index: int, taxonomy: str = "extes") -> Dialogue:
    if not isinstance(rec, dict) or not isinstance(rec.get("content"), list):
        raise DataError(f"{where}: record {index}: expected an object with a 'content' list of turns")
    turns: list[Turn] = []
    for j, item in enumerate(rec["content"]):
        loc = f"{where}: record {index}, turn {j}"
        if not isinstance(item, dict):
            raise DataError(f"{loc}: expected an object like {{'User': ...}} or {{'AI': ...}}, got {type(item).__name__}")
        keys = {k.strip().lower(): k for k in item}
        if "user" in keys:
            text = _clean(item[keys["user"]])
            if not text:
                raise DataError(f"{loc}: empty user text")
            turns.append(Turn("user", text))
        elif "ai" in keys:
            value = item[keys["ai"]]
            strategy = item.get(keys["ai strategy"]) if "ai strategy" in keys else None
            if isinstance(value, dict):  # {"AI": {"text"/"content"/"AI": ..., "strategy"/"AI Strategy": ...}}
                inner = {k.strip().lower(): v for k, v in value.items()}
                text = _clean(inner.get("text") or inner.get("content") or inner.get("ai") or inner.get("response"))
                strategy = strategy or inner.get("ai strategy") or inner.get("strategy")
            else:
                text = _clean(value)
            if not text:
                raise DataError(f"{loc}: empty AI text")
            try:
                canon = normalize_strategy(strategy, taxonomy, where=loc)
            except UnknownLabelError as exc:
                raise DataError(str(exc)) from None
            turns.append(Turn("assistant", text, canon))
        else:
            raise DataError(f"{loc}: a turn needs a 'User' or an 'AI' key, found {sorted(item)}")
    if not turns:
        raise DataError(f"{where}: record {index}: no turns")
    d = Dialogue(
        id=str(rec.get("id") or _stable_id("extes", rec)),
        source="extes",
        scene=_clean(rec.get("scene")),
        description=_clean(rec.get("description")),
        turns=turns,
    )
    if taxonomy != "extes":
        d.meta["taxonomy"] = taxonomy
    return d


def _raw_extes_labels(records: list[Any]) -> list[str]:
    """Strategy labels as written in an ExTES-format file (to tell ExTES from ESConv labels)."""
    labels = []
    for rec in records:
        for item in rec.get("content", []) if isinstance(rec, dict) else []:
            if isinstance(item, dict):
                for k, v in item.items():
                    if k.strip().lower() == "ai strategy" and isinstance(v, str):
                        labels.append(v)
                    elif k.strip().lower() == "ai" and isinstance(v, dict):
                        labels += [x for kk, x in v.items() if "strategy" in kk.lower() and isinstance(x, str)]
    return labels


_ESCONV_ROLES = {"seeker": "user", "speaker": "user", "usr": "user", "supporter": "assistant", "listener": "assistant", "sys": "assistant"}


def _esconv_record(rec: Any, where: str, index: int, merge_consecutive: bool) -> Dialogue:
    if not isinstance(rec, dict) or not isinstance(rec.get("dialog"), list):
        raise DataError(f"{where}: record {index}: expected an object with a 'dialog' list")
    turns: list[Turn] = []
    for j, utt in enumerate(rec["dialog"]):
        loc = f"{where}: record {index}, utterance {j}"
        if not isinstance(utt, dict):
            raise DataError(f"{loc}: expected an object, got {type(utt).__name__}")
        speaker = str(utt.get("speaker", "")).strip().lower()
        role = _ESCONV_ROLES.get(speaker)
        if role is None:
            raise DataError(f"{loc}: unknown speaker {utt.get('speaker')!r}; expected seeker/supporter or speaker/listener")
        text = _clean(utt.get("content"))
        if not text:
            raise DataError(f"{loc}: empty content")
        annotation = utt.get("annotation") or {}
        strategy = None
        meta: dict[str, Any] = {}
        if role == "assistant":
            try:
                strategy = normalize_strategy(annotation.get("strategy"), "esconv", where=loc)
            except UnknownLabelError as exc:
                raise DataError(str(exc)) from None
            raw = annotation.get("strategy")
            if raw and raw != strategy:
                meta["raw_strategy"] = raw
        elif annotation.get("feedback") is not None:
            meta["feedback"] = annotation["feedback"]
        turns.append(Turn(role, text, strategy, meta))
    if not turns:
        raise DataError(f"{where}: record {index}: no turns")
    if merge_consecutive:
        turns = merge_consecutive_turns(turns)
    meta = {k: rec[k] for k in ("experience_type", "emotion_type", "survey_score", "seeker_question1",
                                 "seeker_question2", "supporter_question1", "supporter_question2") if k in rec}
    return Dialogue(
        id=str(rec.get("id") or _stable_id("esconv", rec)),
        source="esconv",
        scene=_clean(rec.get("problem_type")),
        description=_clean(rec.get("situation")),
        turns=turns,
        meta=meta,
    )


def detect_format(data: Any, where: str) -> str:
    """'extes' or 'esconv' for a parsed JSON list, by the keys of its records."""
    if not isinstance(data, list):
        raise DataError(f"{where}: expected a JSON list of dialogues, got {type(data).__name__}")
    for rec in data:
        if isinstance(rec, dict):
            if "content" in rec and isinstance(rec["content"], list):
                return "extes"
            if "dialog" in rec:
                return "esconv"
            if "turns" in rec:
                return "jsonl"
            raise DataError(f"{where}: record 0: unknown key layout {sorted(rec)[:8]}; expected ExTES "
                            "('scene', 'description', 'content') or ESConv ('problem_type', 'situation', 'dialog')")
    raise DataError(f"{where}: no dialogue records found")


def _iter_records(path: Path) -> tuple[str, list[Any]]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    stripped = raw.lstrip()
    if not stripped:
        raise DataError(f"{path}: empty file")
    if stripped[0] == "[":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
        return detect_format(data, str(path)), data
    if stripped[0] == "{":
        records = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if n == 1:  # maybe a single JSON object spanning lines
                    try:
                        obj = json.loads(raw)
                    except json.JSONDecodeError:
                        raise DataError(f"{path}: line {n}: not valid JSON: {exc}") from None
                    return detect_format([obj], str(path)), [obj]
                raise DataError(f"{path}: line {n}: not valid JSON: {exc}") from None
        return "jsonl", records
    raise DataError(f"{path}: not JSON or JSONL (starts with {stripped[:20]!r})")


def _jsonl_record(rec: Any, where: str, index: int) -> Dialogue:
    if isinstance(rec, dict) and "content" in rec and "turns" not in rec:
        return _extes_record(rec, where, index)
    if isinstance(rec, dict) and "dialog" in rec and "turns" not in rec:
        return _esconv_record(rec, where, index, False)
    if not isinstance(rec, dict) or not isinstance(rec.get("turns"), list) or not rec["turns"]:
        raise DataError(f"{where}: record {index}: expected an object with a non-empty 'turns' list")
    for j, t in enumerate(rec["turns"]):
        if not isinstance(t, dict) or t.get("role") not in ROLES or not _clean(t.get("text")):
            raise DataError(f"{where}: record {index}, turn {j}: needs role 'user'|'assistant' and non-empty text")
    if "id" not in rec:
        raise DataError(f"{where}: record {index}: missing 'id'")
    return Dialogue.from_dict(rec)


def read_file(path: str | Path, lenient: bool = False, merge_consecutive: bool = False,
              skipped: list[str] | None = None) -> list[Dialogue]:
    """Read one file of any supported format. With `lenient`, bad records are skipped and their
    reasons appended to `skipped`; otherwise the first bad record raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fmt, records = _iter_records(path)
    taxonomy = detect_taxonomy(_raw_extes_labels(records)) if fmt == "extes" else "extes"
    out: list[Dialogue] = []
    for i, rec in enumerate(records):
        try:
            if fmt == "extes":
                d = _extes_record(rec, str(path), i, taxonomy)
            elif fmt == "esconv":
                d = _esconv_record(rec, str(path), i, merge_consecutive)
            else:
                d = _jsonl_record(rec, str(path), i)
        except DataError as exc:
            if not lenient:
                raise
            if skipped is not None:
                skipped.append(str(exc))
            continue
        d.meta.setdefault("file", path.name)
        d.meta.setdefault("index", i)
        out.append(d)
    return out


DATA_SUFFIXES = (".json", ".jsonl")


def iter_data_files(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES
                          and not p.name.startswith(".") and p.name != "manifest.json")
    elif path.is_file():
        yield path
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")


def load_dialogues(paths: str | Path | Iterable[str | Path], lenient: bool = False,
                   merge_consecutive: bool = False, skipped: list[str] | None = None) -> list[Dialogue]:
    """Load dialogues from files and/or folders (recursively, *.json and *.jsonl)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Dialogue] = []
    for p in paths:
        for f in iter_data_files(p):
            out.extend(read_file(f, lenient=lenient, merge_consecutive=merge_consecutive, skipped=skipped))
    seen: dict[str, int] = {}
    for d in out:  # ids must be unique within a load
        if d.id in seen:
            seen[d.id] += 1
            d.id = f"{d.id}-{seen[d.id]}"
        else:
            seen[d.id] = 0
    return out


# ----------------------------------------------------------------------------------------------------------
# Writing (atomic: write a temp file, then rename, so a crash never leaves a half-written file)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (for manifests and caches)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_jsonl(dialogues: Iterable[Dialogue], path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, "".join(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in dialogues))
    return path


def write_extes_json(dialogues: Iterable[Dialogue], path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, json.dumps([d.to_extes() for d in dialogues], ensure_ascii=False, indent=2) + "\n")
    return path
