"""The human table of `pangu bench` results (the JSON holds every sample)."""
from __future__ import annotations


def span(s: dict, scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    """`median [min-max]` of a harness.spread / summarize dict, times `scale`."""
    return f"{fmt.format(s['median'] * scale)} [{fmt.format(s['min'] * scale)}-{fmt.format(s['max'] * scale)}]"


def loads(values) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def _ratio(r: dict) -> str:
    if r.get("wall") is None:
        return f"refused ({r.get('note', 'no comparable pair')})"
    cpu = f", CPU-s {span(r['cpu'], fmt='{:.2f}')}" if r.get("cpu") else ""
    refused = f", {r['refused']} refused" if r.get("refused") else ""
    return f"{span(r['wall'], fmt='{:.2f}')} wall{cpu} ({r.get('pairs', '?')} pairs{refused})"


def _system_line(name: str, s: dict) -> str:
    rate = s.get("tokens_per_s")
    extra = ""
    if "gflops" in s:
        extra = (f"  {s['gflops']:.1f} GFLOP/s = {100 * s['peak_fraction']:.0f}% of peak, per CPU-s "
                 f"{s['gflop_per_cpu_s']:.1f} = {100 * s['peak_fraction_cpu']:.0f}%")
    if "first_token_s" in s:
        extra = f"  first token {span(s['first_token_s'], 1000, '{:.0f}')} ms"
    if "weight_bytes" in s:
        roof = f" = {100 * s['roofline_fraction']:.0f}% of read bw" if "roofline_fraction" in s else ""
        extra += f"  weights {s['weight_bytes'] / 1e6:.1f} MB/step, {s['achieved_gb_s']:.1f} GB/s{roof}"
    mem = f"  peak RSS {s['peak_rss_mb']:.0f} MB (+{s['step_extra_mb']:.0f})" if "peak_rss_mb" in s else ""
    return (f"  {name:<21}{rate:>9.1f} tok/s  {s['tokens_per_cpu_s']:>8.1f} tok/CPU-s  "
            f"call {span(s['wall_s'], 1000, '{:.0f}')} ms  load {loads(s['load'])}{extra}{mem}")


def _block(title: str, systems: dict, ratios: dict) -> list[str]:
    lines = [title]
    lines += [_system_line(n, s) for n, s in systems.items()]
    width = max([30] + [len(k) + 1 for k in ratios])
    lines += [f"  ratio {k:<{width}}{_ratio(v)}" for k, v in ratios.items()]
    return lines


def _train(r: dict) -> list[str]:
    peak = r["matmul_peak"]
    libs = ", ".join(f"{k} {v['gflops']:.1f}" for k, v in peak.items() if isinstance(v, dict))
    head = (f"train  {r['config']}  threads {r['threads']}  cpu kernels {r.get('cpu_kernels', '?')}  "
            f"{r['gflop_per_step']:.1f} GFLOP/step "
            f"({r['flop_formula']}); fp32 GEMM {peak['n']}^3 peak GFLOP/s: {libs}")
    return _block(head, r["systems"], r["ratios"])


def table(results: list[dict]) -> str:
    """Ratios > 1 mean the first-named system is faster (base time / our time, per interleaved round)."""
    lines = []
    for r in results:
        if r["name"] == "train":
            lines += _train(r)
        elif r["name"] == "generate":
            bw = r.get("bandwidth")
            if bw:
                lines.append(f"memory bandwidth (same run, {bw['mb']} MB): read {bw['read_gb_s']:.1f} GB/s "
                             f"({bw['threads']} threads), numpy copy {bw['copy_gb_s']:.1f} GB/s (1 thread, read + "
                             f"write), load {bw['load']}")
            for b in r["batches"]:
                lines += _block(f"generate  {r['config']}  batch {b['batch']}  threads {r['threads']}",
                                b["systems"], b["ratios"])
        elif r["name"] == "scaling":
            lines.append(f"scaling  {r['config']}")
            for p in r["points"]:
                lines += ["  " + x for x in _train(p)]
        else:
            ratio = r["ratios"]["pipeline/reference"]["wall"]["median"]
            lines.append(f"tokenize  {r['config']}  pipeline / one-doc-at-a-time reference: {ratio or 0:.2f}x")
    lines.append("(ratio = baseline time / first system's time per interleaved round: > 1 means faster; "
                 "[min-max] over rounds; load = 1-minute os.getloadavg())")
    return "\n".join(lines)
