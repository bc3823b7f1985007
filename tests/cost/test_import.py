"""`edgetune.cost` is pure Python: importing it must not import torch or transformers; nor must
the method registry, the config or the forecast, which the cost command reads."""

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
        from edgetune.methods.registry import METHODS
        from edgetune.forecast import StepInputs, predict
        from edgetune.config import load_config
        rule = METHODS["mempepita"].rule
        c = step_cost(NAMED_SHAPES["alexatm-20b"], rule, seq=32, tgt_seq=32)
        assert c.macs > 0 and load_device("rpi4").memory.value == 4294967296
        inputs = StepInputs(NAMED_SHAPES["alexatm-20b"], batch=1, seq=32)
        assert predict(inputs, "sparse", {"scheme": "last-2"}).trained_params > 0
        assert load_config(None, ["train.method=lora", "method.r=4"]).method.r == 4
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
        assert not bad, bad
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
