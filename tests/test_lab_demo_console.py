"""trl_ipo.lab.experiments.demo_console: what reaches the terminal and what only the log, and the step bar."""

import logging
import sys

from trl_ipo.lab.experiments.demo_console import Console, step_bar_callback


def test_say_show_and_capture_route_text(tmp_path, capsys):
    log = tmp_path / "demo.log"
    console = Console(log, progress=False)
    console.say("stage 1")  # progress off: the log only
    console.show("table")  # always on the terminal
    with console.capture():
        print("library print")
        print("library warning", file=sys.stderr)
    print("after capture")
    console.close()
    out, err = capsys.readouterr()
    assert out == "table\nafter capture\n"
    assert err == ""
    assert log.read_text() == "stage 1\ntable\nlibrary print\nlibrary warning\n"


def test_capture_moves_library_log_handlers_to_the_log_and_back(tmp_path):
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        console = Console(tmp_path / "demo.log", progress=True)
        with console.capture():
            assert handler.stream is console.log
        assert handler.stream is sys.stderr
        console.close()
    finally:
        logger.removeHandler(handler)


def test_step_bar_advances_once_per_optimiser_step():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    callback = step_bar_callback(bar)
    for _ in range(3):
        callback.on_step_end(None, None, None)
    assert bar.n == 3
