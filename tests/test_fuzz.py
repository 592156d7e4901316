"""The fast twin of `python -m benchmarks.fuzz` (issue 28): 100 mutants of each codec's file (800 in all), through the
same code (one worker process with an address-space limit and a 10 s alarm per operation, a supervisor that restarts
it), must be refused cleanly or decode: no unexpected exception, no crash, no hang, no memory blow-up, and no pc file
that decodes to wrong pixels without an error.

The base files are the frozen tests/fixtures files for the video codecs, files written now for pc and student, and
the version-2 pc fixture, which carries no pixel digest: its decodes warn that their output cannot be verified, so
other pixels from it count as `unverified`, not `wrong`. The seed is fixed: a failure here reproduces with the
`replay` command printed beside it.
"""
from __future__ import annotations

from benchmarks import fuzz

N = 100                  # mutants per base file (9 bases): about 30 s of one core in all
SEED = 28
SOURCES = {label: "fixture" for label in fuzz.CODECS} | {"pc": "both", "student": "fresh"}


def _failures(result, outcomes: set[str]) -> list[str]:
    lines = []
    for cls in result["failures"]:
        if cls["outcome"] in outcomes:
            ex = cls["examples"][0]
            lines.append(f"{cls['codec']} {cls['outcome']} {cls['type']} at {cls['where'] or '?'} "
                         f"({cls['count']} mutants), e.g. {ex['mutation'][:160]} -> {ex['message'][:160]!r}; "
                         f"{ex['replay']}")
    return lines


def test_mutants_are_refused_cleanly_or_decode(tmp_path):
    """One test, so that the run happens once even when pytest-xdist spreads a module's tests over workers."""
    result = fuzz.run(fuzz.CODECS, n=N, seed=SEED, out=tmp_path, sources=SOURCES, timeout=10.0, progress=False)
    rows = [r for r in result["rows"] if r["base"] != "all"]
    total = next(r for r in result["rows"] if r["base"] == "all")
    # the fuzzer itself: every base got its mutants, some were refused, some got past every check to the decoder
    assert len(rows) == len(fuzz.CODECS) + 1 and not result["generator_errors"], result["generator_errors"]
    for r in rows:
        assert r["mutants"] == N and r["refused"] > 0, r
        assert r["decoded"] > 0, f"{r['base']}: no mutant decoded, so none got past the checks to the decoder"
    assert result["unique_mutants"] > 0.9 * N * len(rows)
    # the targets
    problems = []
    for column, outcomes, what in [("unexpected", {"unexpected"}, "unexpected exceptions"),
                                   ("crashes", {"crash"}, "crashes"), ("hangs", {"hang"}, "hangs"),
                                   ("memory", {"memory"}, "memory blow-ups"),
                                   ("wrong", {"wrong"}, "silent wrong lossless outputs")]:
        if total[column]:
            problems.append(f"{total[column]} {what}:")
            problems += [f"  {line}" for line in _failures(result, outcomes)]
    assert not problems, "\n".join(problems)


def test_other_pixels_from_a_file_that_warned_are_unverified_not_wrong(tmp_path):
    """The classification alone: a lossless decode to other pixels is `wrong` unless the decode said that its
    output cannot be verified (a pc file without a pixel digest)."""
    [fresh, old] = fuzz.base_files(["pc"], "both", tmp_path)
    f = fuzz.Fuzz([fresh, old], 1, 0, tmp_path, progress=False)
    f.limits = {"import_rss_bytes": 0, "codec_rss_bytes": {}}
    info = {"outcome": "ok", "seconds": 0.0}
    for base, verified in ((fresh, True), (old, False)):
        decode = {"outcome": "ok", "same": False, "shape": [5, 8, 8], "verified": verified, "seconds": 0.0}
        f._record(base, 0, "edit", "pixels edited", b"x", {"decode": decode, "info": dict(info)})
    rows = {r["base"]: r for r in f.table()}
    assert rows["pc"]["wrong"] == 1 and rows["pc"]["unverified"] == 0
    assert rows["pc@fixture"]["wrong"] == 0 and rows["pc@fixture"]["unverified"] == 1
    assert rows["all"]["wrong"] == 1 and rows["all"]["unverified"] == 1
    assert [c["codec"] for c in f.failure_classes()] == ["pc"]      # the unverified one is no failure
