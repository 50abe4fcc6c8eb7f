"""Each guard of the cluster locks, the shared caches and the sampling-phase resume removed in turn:
the test named beside it must then fail. Run by hand (`python scripts/check_mutations.py [NAME ...]`);
it edits one source file at a time and always restores it. Exits 1 if a mutation survives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS, RUNNER = "tiwbench/sweep/locks.py", "tiwbench/sweep/runner.py"
T = "tests/test_locks.py::"

# (name, file, what is there, what replaces it, the test that must fail)
MUTATIONS = [
    ("re-check after break", LOCKS, "if owner(path) != seen or not is_stale(path, stale_after_s):", "if False:",
     T + "test_break_rechecks_that_the_lock_is_the_one_judged_stale"),
    ("guard around break", LOCKS, "        with _guard(path):\n",
     "        with __import__('contextlib').nullcontext():\n", T + "test_break_waits_for_the_guard"),
    ("pid namespace in identity", LOCKS,
     'and info.get("pidns") is not None and info.get("pidns") == pid_namespace())', ")",
     T + "test_owner_in_another_pid_namespace_is_judged_by_its_lease"),
    ("compare-and-delete release", LOCKS, "            os.rename(self.path, aside)",
     "            self.path.unlink()\n            return",
     T + "test_paused_owner_that_lost_its_lease_does_not_confirm_and_release_keeps_the_new_lock"),
    ("lease check in confirm", LOCKS, "        return self._renew()", "        return True",
     T + "test_paused_owner_that_lost_its_lease_does_not_confirm_and_release_keeps_the_new_lock"),
    ("fenced record write", RUNNER, "lease_lost = bool(held) and not held[-1].confirm()", "lease_lost = False",
     T + "test_runner_does_not_write_a_record_after_losing_the_lease"),
    ("short grace for empty locks", LOCKS, "return age > WRITE_GRACE_S", "return age > stale_after_s",
     T + "test_empty_lock_file_is_damage_after_a_short_grace"),
    ("ages on the folder's clock", LOCKS, "age = folder_now(path.parent) - mtime", "age = time.time() - mtime",
     T + "test_lock_age_is_measured_on_the_folder_clock"),
    ("stale break logged", LOCKS, '    log.warning("broke the stale claim %s: %s", path, who)', "    pass",
     T + "test_stale_break_is_logged"),
    ("umask, not 0600", "tiwbench/records.py", "    os.chmod(tmp, 0o666 & ~current_umask())\n", "",
     "tests/test_ffhq_cache.py::test_cache_files_follow_the_umask"),
    ("PermissionError is not damage", "tiwbench/integrity.py", "    except PermissionError as e:",
     "    except KeyboardInterrupt as e:",
     "tests/test_ffhq_cache.py::test_another_users_cache_file_is_an_error_naming_it_never_damage"),
    ("FFHQ cache content hash", "tiwbench/data/ffhq.py",
     'if meta.get("sha256") != array_digest(images, progress_name="decoded cache check"):', "if False:",
     "tests/test_ffhq_cache.py::test_bit_flip_in_the_cache_is_caught_by_its_content_hash"),
    ("network saved before sampling", RUNNER, "            save_network(network, ema,", "            (network, ema,",
     "tests/test_trust.py::test_kill_in_sampling_resumes_without_retraining"),
]


def main(selected: list[str]) -> int:
    survived = []
    for name, rel, old, new, test in MUTATIONS:
        if selected and not any(s in name for s in selected):
            continue
        path = ROOT / rel
        original = path.read_text()
        if original.count(old) != 1:
            print(f"{name}: the guarded line is not found once in {rel}; update this script")
            return 2
        path.write_text(original.replace(old, new))
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                                  cwd=ROOT, capture_output=True, text=True)
        finally:
            path.write_text(original)
        caught = proc.returncode != 0
        print(f"{'caught  ' if caught else 'SURVIVED'}  {name}  ({test.split('::')[-1]})", flush=True)
        if not caught:
            survived.append(name)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
