"""`extes chat --arms FILE --arm NAME`: talk to one arm in the terminal, replies streamed as they come.

Commands: /reset starts over, /quit (or Ctrl-D) leaves. Strategy arms show their strategy in brackets
after each reply (it is metadata, not part of the reply). Nothing is logged or saved.
"""

from __future__ import annotations

import argparse
import sys

from extes.models.arms import load_arms
from extes.models.pool import ArmPool


def configure_chat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arms", required=True, help="arms YAML, or a study protocol YAML with `arms:`")
    parser.add_argument("--arm", help="arm name (default: the first arm in the file)")
    parser.add_argument("--max-context", type=int, default=None, help="cap the context window (tokens)")


def chat_loop(pool, arm_name: str, read=input, write=None) -> None:
    """The conversation loop, separate from argument parsing so tests can drive it."""
    write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    history: list[dict[str, str]] = []
    write(f"chatting with {arm_name!r}; /reset to start over, /quit to leave\n")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in {"/quit", "/exit"}:
            return
        if text == "/reset":
            history.clear()
            write("(new conversation)\n")
            continue
        history.append({"role": "user", "content": text})
        write(f"{arm_name}> ")
        reply = None
        try:
            for ev in pool.stream(arm_name, history):
                write(ev.delta)
                if ev.done:
                    reply = ev.reply
        except KeyboardInterrupt:
            write(" [stopped]\n")
            history.pop()
            continue
        except ValueError as exc:  # e.g. a single message too long for the window
            write(f"\n[error: {exc}]\n")
            history.pop()
            continue
        if reply is None:  # pragma: no cover - the stream always ends with a reply
            continue
        tag = f"  [{reply.strategy}]" if reply.strategy else ""
        write(f"{tag}\n")
        message = {"role": "assistant", "content": reply.text}
        if reply.strategy:
            message["strategy"] = reply.strategy
        history.append(message)


def run_chat(args: argparse.Namespace) -> int:
    arms = load_arms(args.arms)
    names = [a.name for a in arms]
    name = args.arm or names[0]
    if name not in names:
        raise ValueError(f"{args.arms}: no arm named {name!r}; choose from {names}")
    arm = next(a for a in arms if a.name == name)
    pool = ArmPool([arm], max_context=args.max_context)
    try:
        chat_loop(pool, name)
    finally:
        pool.close()
    return 0
