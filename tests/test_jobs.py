"""Jobs: generators that yield progress and return a result."""

from lvlm_studio.core.plugin.jobs import Progress, collect, relay


def test_relay_reexpresses_progress_and_returns_the_result():
    def sub():
        yield Progress(1, 2, "a")
        yield Progress(2, 2, "b")
        return "done"

    result, seen = collect(relay(sub(), lambda p: Progress(10 + p.done, 20, f"outer {p.message}")))
    assert result == "done"
    assert seen == [Progress(11, 20, "outer a"), Progress(12, 20, "outer b")]
    assert collect(relay(42, lambda p: p)) == (42, [])
