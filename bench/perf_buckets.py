#!/usr/bin/env python3
"""Where a server's samples go, in buckets, from `perf script` output (call stacks).

usage: perf script -i perf.data -F comm,tid,period,ip,sym,dso | perf_buckets.py [--top N]

Two tables:
* by syscall: the share of samples under each syscall (the kernel's `__x64_sys_*` frame in the
  stack), including the loopback receive path it runs (softirq), and the share in user space;
* by where the leaf frame is (self time): kernel, allocator, tokio, hyper/axum/http, our code,
  std, Bun's binary (no symbols), the JIT, ...
and the top leaf symbols.
"""

import collections
import re
import sys

TOP = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 25


def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        if not line.startswith((" ", "\t")):
            stack = []  # the sample's header line
            continue
        m = re.match(r"\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)$", line)
        if m:
            stack.append((m.group(2), m.group(3)))
    if stack:
        yield stack


def leaf_bucket(sym, dso):
    if dso == "inlined":
        dso = ""
    if "kernel" in dso:
        return "kernel"
    if sym.startswith(("malloc", "free", "_int_malloc", "_int_free", "cfree", "realloc", "__libc_malloc",
                       "__libc_free", "malloc_consolidate", "unlink_chunk", "tcache")) or "alloc::alloc" in sym \
            or "__rust_alloc" in sym or "__rust_dealloc" in sym or sym.startswith("mi_") or "bmalloc" in sym \
            or "libpas" in sym or sym.startswith("pas_"):
        return "allocator"
    if "libc" in dso and sym in ("[unknown]",):
        return "libc (other)"
    if sym.startswith(("tokio::", "<tokio::")) or "tokio::runtime" in sym or "tokio::" in sym[:40]:
        return "tokio (scheduler, I/O driver, timers)"
    if sym.startswith(("mio::", "<mio::")):
        return "mio"
    if any(k in sym[:60] for k in ("hyper::", "hyper_util", "axum::", "http::", "tower::", "httparse", "matchit")):
        return "hyper / axum / http / tower"
    if "switchboard" in sym[:80]:
        return "switchboard (our code)"
    if any(k in sym[:40] for k in ("core::", "alloc::", "std::", "<core", "<alloc", "<std", "hashbrown", "bytes::",
                                   "memchr", "serde", "sha1", "base64", "tracing", "metrics", "parking_lot")):
        return "std / core / small crates"
    if sym.startswith(("__mem", "memcpy", "memmove", "memset", "__strlen", "__memcmp", "pthread_", "__lll", "__GI")):
        return "libc (mem*, locks)"
    if "/bun" in dso:
        return "bun binary (uWS, JSC, Zig; no symbols)"
    if "perf-" in dso or "JIT" in dso or dso == "[unknown]":
        return "JIT / unknown"
    return "other: " + dso.rsplit("/", 1)[-1]


def syscall_of(stack):
    for sym, dso in stack:
        m = re.match(r"__(?:x64|ia32)_sys_(\w+)", sym)
        if m and "kernel" in dso:
            return m.group(1)
    if stack and "kernel" in stack[0][1]:
        if any("irq" in s or "softirq" in s or "apic" in s for s, _ in stack):
            return "(kernel: interrupts)"
        if any("exit_to_user" in s or "schedule" in s for s, _ in stack):
            return "(kernel: scheduler / return to user)"
        return "(kernel: other)"
    return None


def main():
    total = 0
    by_sys = collections.Counter()
    by_bucket = collections.Counter()
    leaves = collections.Counter()
    user_inclusive = collections.Counter()
    for st in samples(sys.stdin):
        total += 1
        sc = syscall_of(st)
        by_sys[sc if sc else "(user space)"] += 1
        sym, dso = st[0]
        b = leaf_bucket(sym, dso)
        by_bucket[b] += 1
        short = re.sub(r"::\{\{closure\}\}|\(inlined\)", "", sym)[:110]
        leaves[(short, dso.rsplit("/", 1)[-1])] += 1
        # inclusive: which of our layers is on the stack at all
        seen = set()
        for s, d in st:
            for key, label in (("Shared::publish", "Shared::publish (the broadcast, incl. Hub::publish)"),
                               ("hub::Hub::publish", "Hub::publish (the loop over members)"),
                               ("Serving as core::future::future::Future>::poll", "Serving::poll (a connection's task)"),
                               ("Socket::poll_write", "Socket::poll_write"),
                               ("Socket::poll_read", "Socket::poll_read"),
                               ("connection::dispatch::", "connection::dispatch (inbound frames)"),
                               ("set_waker", "ConnHandle::set_waker"),
                               ("waker::wake_by_ref", "tokio wake_by_ref (a connection woken)"),
                               ("hyper::proto", "hyper (HTTP/1 connection)"),
                               ("axum::routing", "axum router"),
                               ("Upgrade as axum", "ws::upgrade (the extractor)"),
                               ("Upgrade::on_upgrade", "ws::upgrade::on_upgrade"),
                               ("connection::admit", "connection::admit"),
                               ("hub::Hub::register", "Hub::register"),
                               ("tokio::runtime::scheduler", "tokio scheduler frames"),
                               ("tokio::runtime::io::driver", "tokio I/O driver (epoll)"),
                               ("tokio::runtime::time", "tokio timers"),
                               ("serve::serve", "the accept loop (serve.rs)")):
                if key in s and label not in seen:
                    seen.add(label)
                    user_inclusive[label] += 1
    pct = lambda n: f"{100.0 * n / total:5.1f} %"
    print(f"samples: {total}")
    print("\n| under syscall (inclusive of its loopback softirq work) | share |\n|---|---|")
    for k, n in by_sys.most_common(14):
        print(f"| {k} | {pct(n)} |")
    print("\n| leaf frame in (self) | share |\n|---|---|")
    for k, n in by_bucket.most_common():
        print(f"| {k} | {pct(n)} |")
    if user_inclusive:
        print("\n| on the stack (inclusive) | share |\n|---|---|")
        for k, n in user_inclusive.most_common():
            print(f"| {k} | {pct(n)} |")
    print(f"\n| top leaf symbols | dso | share |\n|---|---|---|")
    for (s, d), n in leaves.most_common(TOP):
        print(f"| `{s}` | {d} | {pct(n)} |")


main()
