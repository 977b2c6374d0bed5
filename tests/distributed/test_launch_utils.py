"""launch_utils.launch retries only the known teardown abort, and says so; an earlier crash fails."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_utils import DistributedRunError, LaunchRetryWarning, launch  # noqa: E402

pytestmark = pytest.mark.distributed

# rank 0 aborts (SIGABRT) on the first attempt only, before or after every rank wrote its output
SCRIPT = """
import os, sys, time
sys.path.insert(0, {here!r})
from launch_utils import write_output
when, marker = sys.argv[1], sys.argv[2]
rank = int(os.environ["PADDLE_TRAINER_ID"])
first = rank == 0 and not os.path.exists(marker)
if first and when == "before":
    open(marker, "w").close()
    os.abort()
write_output({{"rank": rank}})
if first and when == "after":
    time.sleep(1.0)  # the other rank's output is written too: a crash in teardown
    open(marker, "w").close()
    os.abort()
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "abort_once.py"
    path.write_text(SCRIPT.format(here=os.path.dirname(os.path.abspath(__file__))))
    return path


def test_abort_after_complete_outputs_is_retried_and_reported(script, tmp_path):
    marker = tmp_path / "aborted"
    with pytest.warns(LaunchRetryWarning, match="teardown abort"):
        run = launch(script, nproc=2, args=["after", marker], timeout=120)
    assert marker.exists() and run.retries == 1
    assert [o["rank"] for o in run.outputs()] == [0, 1]


def test_abort_before_outputs_fails_without_retry(script, tmp_path, recwarn):
    marker = tmp_path / "aborted"
    with pytest.raises(DistributedRunError) as err:
        launch(script, nproc=2, args=["before", marker], timeout=120)
    assert "Exit code -6" in str(err.value) or "-6" in str(err.value)
    assert not [w for w in recwarn if issubclass(w.category, LaunchRetryWarning)]
    assert Path(marker).exists()  # the one attempt ran (a retry would have succeeded: marker present)
