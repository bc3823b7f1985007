"""`edgetune.cost` is pure Python: importing it must not import torch or transformers."""

import subprocess
import sys
import textwrap


def test_cost_imports_without_torch():
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import edgetune.cost
        from edgetune.cost import step_cost, load_device, NAMED_SHAPES
        c = step_cost(NAMED_SHAPES["alexatm-20b"], "mempepita", seq=32, tgt_seq=32)
        assert c.macs > 0 and load_device("rpi4").memory.value == 4294967296
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
        assert not bad, bad
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
