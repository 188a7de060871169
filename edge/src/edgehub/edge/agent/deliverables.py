"""What a goal asks for, read from its words when the agent starts.

A goal is cut into clauses (sentences, commas, "then", "and"); a clause that starts with an imperative
verb, or is a question, yields deliverables:

- ``write``: a file to produce ("save ... to note.txt", "create plan.txt", "... as sorted.txt"), with the
  text it must hold when the goal spells it ("the word hello", "'line ok'"), or the output of a command
  the goal runs ("... its output into answer.txt": ``echo = "run"``);
- ``read``: a file to look at ("read order.txt", "what does motd.txt say?", "report the code stored in
  code.txt"); any attempt counts, so a
  goal about a missing file can still be finished honestly;
- ``run``: a command to run ("run echo 42", "run `ls -l`");
- ``remember`` / ``recall``: a note to store (holding the goal's number or quoted value) and to look up;
- ``answer``: a result the final answer must report (a question, "tell me", "finish with it" after a
  remembered value, "answer with what the file holds": ``echo = "read"``);
- ``keep``: a file the goal tells the agent to read (and never to write), which it must not overwrite;
- ``dir``: a folder to create ("make a directory called archive");
- ``move``: a file to move or rename (``target``) and where it must end up (``expect``): "rename
  draft.txt to final.txt".

A sentence whose subject is a file ("temps.txt lists the readings") names an input: ``read`` and
``keep``. A clause that checks "it" or "the file" again ("check it by opening the file again", "read it back")
is a ``read`` of the file the goal wrote just before; a "how many" question wants a number as the
answer (``echo = "number"``, with the question from "how many" on as its ``target``).

Precision matters more than coverage: a wrong deliverable would send an agent back for work the goal
never asked for, so a clause without a recognised verb yields nothing, and so does an unclear file role.
Checking the agent's record against them is ``finishcheck.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
_URL = re.compile(r"\b\w+://\S+")
_FILE = re.compile(
    r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.[A-Za-z][A-Za-z0-9]{0,5}|\.[A-Za-z][\w-]{0,20}(?!\s+files?\b))(?![\w/])"
)
_CLAUSES = re.compile(r"[.;!?](?=\s|$)|,\s*|\s+(?:and then|then|and|afterwards|after that)\s+", re.I)
_QUOTED = re.compile(r"""[`'"“‘]([^`'"”’]{1,200})[`'"”’]""")
_LITERAL = re.compile(
    r"\bthe (?:word|phrase|text|number|value|line)\s+(?!of\b)(.+?)(?=\s+(?:into|to|in|on|as|inside)\b|$)",
    re.I,
)
_FOLDER = re.compile(r"\b(?:directory|folder)\s+(?:called\s+|named\s+)?[`'\"“‘]?([\w][\w.-]{0,63})", re.I)
_NOT_NAMES = {"in", "inside", "into", "for", "with", "to", "here", "there", "that", "which", "on", "at"}
_AGAIN = re.compile(r"\b(?:again|back)\b", re.I)
_INTO_FOLDER = re.compile(r"\b(?:into|to|in)\s+(?:the\s+)?(?:folder|directory)\s+([\w][\w-]{0,63})\b", re.I)
_DESCRIBES = {"lists", "holds", "contains", "has", "says", "shows", "records", "keeps", "gives", "stores"}
"""Verbs of a sentence whose subject is a file ("temps.txt lists readings"): that file is an input."""
_HOW_MANY = re.compile(r"\bhow (?:many|much)\b", re.I)
_NUMBER = re.compile(r"(?<![\w.-])\d+(?:[.,]\d+)?(?![\w])")
_FILLERS = {"please", "then", "and", "also", "now", "first", "next", "finally", "afterwards", "just", "so"}
_WRITE = {"write", "save", "put", "store", "create", "make", "record", "keep", "append", "add", "copy"}
_EDIT = {"fix", "update", "change", "edit", "correct"}
_MOVE = {"rename", "move"}
_READ = {"read", "open", "show", "view", "cat", "summarise", "summarize", "check", "inspect", "look"}
_RUN = {"run", "execute"}
_REMEMBER = {"remember", "memorise", "memorize", "note"}
_RECALL = {"recall"}
_QUESTION = {"what", "which", "how", "who", "where", "when", "is", "are", "does", "do", "could", "can"}
_TELL = re.compile(
    r"\b(?:tell me|report|answer with|reply with|respond with|confirm|as (?:your|the) answer)\b", re.I
)
_FINISH_WITH = re.compile(r"\bfinish (?:with|by giving)\s+(.+)$", re.I)
_TO_FILE = re.compile(
    r"\b(?:into|to|in|as|called|named|inside|on)\s+"
    r"(?:a |the )?(?:new |second )?(?:file )?(?:called |named )?$",
    re.I,
)
_OUTPUT = re.compile(
    r"\b(?:(?:its|the|that) (?:output|result)|what it (?:prints|printed|shows|showed))\b", re.I
)
_INTO = re.compile(r"\b(?:into|to|as)\s+(?:a |the )?(?:new |second )?(?:file )?(?:called |named )?$", re.I)
"""A destination after a reading verb ("summarise a.txt into b.txt"): narrower than _TO_FILE, as
"what is in a.txt" names a source."""
_FILE_TEXT = re.compile(
    r"\b(?:what (?:it|the file) (?:says|holds|contains)|its (?:text|content|contents))\b", re.I
)
_COMMAND_STOP = {"with", "and", "to", "into", "then", "in", "for", "on", "from", "using"}
_REFERENCES = {"it", "that", "this", "them", "the", "what", "its", "which"}
_DESCRIBING = {"the", "a", "an", "its", "their", "what", "how", "which", "whatever"}


def _clauses(goal: str) -> Iterator[tuple[str, bool]]:
    """(clause, in a question sentence) for each clause of ``goal``."""
    for sentence in re.split(r"(?<=[.!?])\s+", _URL.sub(" URL ", goal.strip())):
        question = sentence.rstrip().endswith("?")
        for clause in _CLAUSES.split(sentence):
            if clause.strip():
                yield clause.strip(), question


def _verb(clause: str) -> tuple[str, str]:
    """The clause's leading verb (after fillers), lower-cased, and the text after it."""
    words = clause.split()
    i = 0
    while i < len(words) and words[i].lower().strip(",") in _FILLERS:
        i += 1
    if i == len(words):
        return "", ""
    return words[i].lower().strip(",:"), " ".join(words[i + 1 :])


def _deliverable(kind: str, target: str = "", expect: str = "", echo: str = "") -> agent_pb2.Deliverable:
    return S.Deliverable(kind=kind, target=target, expect=expect, echo=echo)


def _literal(clause: str) -> str:
    quoted = _QUOTED.search(clause)
    if quoted:
        return quoted.group(1).strip()
    found = _LITERAL.search(_FILE.sub(" ", clause))
    value = found.group(1).strip(" .,") if found else ""
    return "" if value.split()[:1] in (["into"], ["to"], ["in"], ["on"], ["as"], ["inside"]) else value


def _files(clause: str, destination: re.Pattern[str] = _TO_FILE) -> list[tuple[str, bool]]:
    """(file, named as the clause's destination) for each file name in ``clause``."""
    out = []
    for m in _FILE.finditer(clause):
        if m.group(1) == "URL":
            continue
        out.append((m.group(1), bool(destination.search(clause[: m.start()]))))
    return out


def _write_clause(verb: str, clause: str, rest: str, ran: bool) -> list[agent_pb2.Deliverable]:
    files = _files(clause)
    if not files:
        if verb in ("make", "store", "keep") and re.search(r"\bnote\b|\bfor later\b", rest, re.I):
            return [_deliverable("remember", expect=_value(clause))]
        folder = _FOLDER.search(rest) if verb in ("make", "create", "add") else None
        if folder and folder.group(1).lower() not in _NOT_NAMES:
            return [_deliverable("dir", folder.group(1).rstrip("."))]
        return []
    if verb in _MOVE and len(files) == 2 and files[1][1]:  # "rename a.txt to b.txt"
        return [_deliverable("move", files[0][0], files[1][0])]
    folder = _INTO_FOLDER.search(clause) if verb in _MOVE and len(files) == 1 else None
    if folder:  # "move a.txt into the folder old"
        return [_deliverable("move", files[0][0], f"{folder.group(1)}/{files[0][0].rsplit('/', 1)[-1]}")]
    first_is_object = rest.lower().startswith(files[0][0].lower())  # "create plan.txt ...", "copy a to b"
    out = []
    for i, (path, destination) in enumerate(files):
        if destination or (i == 0 and first_is_object and len(files) == 1):
            echo = "run" if ran and _OUTPUT.search(clause) else ""
            out.append(_deliverable("write", path, "" if echo else _literal(clause), echo))
        elif verb not in _MOVE:  # a moved file is gone afterwards: nothing to hold it to
            out.append(_deliverable("read", path))
    return out


def _command(rest: str) -> str:
    quoted = _QUOTED.search(rest)
    if quoted:
        return quoted.group(1).strip()
    words = re.sub(r"^(?:the |a )?(?:shell |following )?(?:command|program)\s+", "", rest, flags=re.I).split()
    taken: list[str] = []
    for word in words:
        if word.lower() in _COMMAND_STOP and taken:
            break
        taken.append(word)
    return " ".join(taken).strip(" .,")


def _value(clause: str) -> str:
    """The most checkable part of a value to remember: quoted text, else its last number."""
    quoted = _QUOTED.search(clause)
    if quoted:
        return quoted.group(1).strip()
    numbers = _NUMBER.findall(clause)
    return numbers[-1] if numbers else ""


def _answer(clause: str, question: bool, remembered: str, read: bool) -> agent_pb2.Deliverable | None:
    finish = _FINISH_WITH.search(clause)
    if finish:
        said = finish.group(1).strip(" .")
        if said.lower() in _REFERENCES or said.lower().startswith(("it ", "that ")):
            return _deliverable("answer", expect=remembered)
        if _FILE_TEXT.search(clause) and read:
            return _deliverable("answer", echo="read")
        quoted = _QUOTED.search(said)
        if quoted:
            return _deliverable("answer", expect=quoted.group(1))
        literal = len(said.split()) <= 3 and said.split()[0].lower() not in _DESCRIBING
        return _deliverable("answer", expect=said if literal else "")
    if question or _TELL.search(_FILE.sub(" ", clause)):
        echo = "read" if read and _FILE_TEXT.search(clause) else ""
        asked = _HOW_MANY.search(clause)
        if asked and not echo:  # the question itself, from "how many", to say what the number is of
            return _deliverable("answer", clause[asked.start() :].strip(" .?!"), echo="number")
        return _deliverable("answer", echo=echo)
    return None


def extract(goal: str) -> list[agent_pb2.Deliverable]:
    """The deliverables ``goal`` asks for, in the order it names them (duplicates dropped)."""
    out: list[agent_pb2.Deliverable] = []
    remembered = ""
    for clause, question in _clauses(goal):
        verb, rest = _verb(clause)
        ran = any(d.kind == "run" for d in out)
        subject = _FILE.fullmatch(clause.split()[0].strip(",:"))
        if subject and rest.split()[:1] and rest.split()[0].lower() in _DESCRIBES:  # "a.txt lists ..."
            out += [_deliverable("read", subject.group(1)), _deliverable("keep", subject.group(1))]
        elif verb in _WRITE or verb in _EDIT or verb in _MOVE:
            found = _write_clause(verb, clause, rest, ran)
            if verb in _EDIT:
                found += [_deliverable("write", p) for p, _ in _files(clause)]
            out += found
        elif verb in _RUN and rest:
            out.append(_deliverable("run", _command(rest)))
        elif verb in _REMEMBER:
            remembered = _value(clause) or remembered
            out.append(_deliverable("remember", expect=_value(clause)))
        elif verb in _RECALL or re.match(r"look\b.*\bup\b", f"{verb} {rest}", re.I):
            out.append(_deliverable("recall"))
        elif verb in _READ:
            for path, destination in _files(clause, _INTO):
                kinds = ("write",) if destination else ("read", "keep")
                out += [_deliverable(k, path) for k in kinds]
            written = [d.target for d in out if d.kind == "write"]
            if not _files(clause) and written and _AGAIN.search(clause):  # "check it ... again"
                out.append(_deliverable("read", written[-1]))
        elif verb in _QUESTION or question:
            out += [_deliverable("read", p) for p, _ in _files(clause)]
        elif _TELL.search(_FILE.sub(" ", clause)):  # "report the number stored in serial.txt"
            out += [_deliverable("read", p) for p, destination in _files(clause, _INTO) if not destination]
        answer = _answer(clause, question, remembered, any(d.kind == "read" for d in out))
        if answer is not None:
            out.append(answer)
    return _keeps_last(_unique(out))


def covered(d: agent_pb2.Deliverable) -> set[str]:
    """The files ``d`` is about (a move: both ends)."""
    return {d.target, d.expect} if d.kind == "move" else {d.target}


def files_named(goal: str) -> set[str]:
    """Every file name ``goal`` mentions (sources, destinations and files it only talks about)."""
    return {m.group(1) for m in _FILE.finditer(_URL.sub(" URL ", goal)) if m.group(1) != "URL"}


def spelled_out(goal: str, text: str) -> bool:
    """``text`` is given verbatim by ``goal`` as the thing to write: quoted, or named as "the word ..." /
    "the phrase ..." (not "the value ...", "the text ...": those often describe rather than give)."""
    if not text:
        return False
    quoted = any(q.group(1).strip() == text for q in _QUOTED.finditer(goal))
    named = re.search(rf"\bthe (?:word|phrase)\s+{re.escape(text)}(?![\w-])", goal, re.I)
    return quoted or named is not None


def _unique(items: list[agent_pb2.Deliverable]) -> list[agent_pb2.Deliverable]:
    seen: set[tuple[str, str, str, str]] = set()
    out: list[agent_pb2.Deliverable] = []
    for d in items:
        key = (d.kind, d.target, d.expect, d.echo)
        if key not in seen and not (d.kind == "answer" and any(o.kind == "answer" for o in out)):
            seen.add(key)
            out.append(d)
    return out


def _keeps_last(items: list[agent_pb2.Deliverable]) -> list[agent_pb2.Deliverable]:
    """Keeps after the rest, and none for a file the goal also asks to write."""
    written = {d.target for d in items if d.kind == "write"}
    keeps = [d for d in items if d.kind == "keep" and d.target not in written]
    return [d for d in items if d.kind != "keep"] + keeps


def describe(d: agent_pb2.Deliverable) -> str:
    """One line a person (or the agent) reads."""
    what = {
        "write": f"write {d.target}",
        "read": f"read {d.target}",
        "run": f"run {d.target!r}",
        "remember": "remember a note",
        "recall": "recall the note",
        "answer": "answer with the result",
        "keep": f"leave {d.target} as it is",
        "dir": f"make the folder {d.target}",
        "move": f"move {d.target} to {d.expect}",
    }.get(d.kind, d.kind)
    if d.kind == "move":
        return what
    if d.echo == "number":
        return what + " (a number)"
    if d.expect:
        what += f" (holding {d.expect!r})"
    if d.echo:
        what += f" (holding what the {d.echo} showed)"
    return what
