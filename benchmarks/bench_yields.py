"""What one yield of the chat's streaming event costs the server, under the GIL the sampling needs too.

    python benchmarks/bench_yields.py [--runs 200]

gradio rebuilds each output a yield leaves out (a new component and its JSON schema: gr.skip() is an update) and
postprocesses each it is given. Every waiting tab yields every few seconds (its place, or nothing new so a closed
tab's event ends) and every running one at its step counter: with 50 tabs that was more of the GIL than the engine
(benchmarks/load.py). This builds the page on the built-in model and times, through gradio's own
`Blocks.postprocess_data`, the Enter event's two common yields, and the rebuild of each output: the event's own
and those of the quick event after the turn (the gallery, selection and chat list, which were the event's outputs
before). Medians of --runs, alternating.
"""

from __future__ import annotations

import asyncio

import common
from common import med, table

STEP = [{"role": "user", "content": "a red circle"}, {"role": "assistant", "content": "Step 3/20 · 1.0s"}]


def main() -> None:
    p = common.parser(__doc__)
    p.set_defaults(runs=200)
    args = p.parse_args()
    common.setup(args)
    import gradio as gr
    from gradio.state_holder import SessionState

    from engine.engine import Engine
    from ui.app import build

    demo = build(Engine(device="cpu"), args.model)
    box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "prompt")
    submit_id, submit = next((i, f) for i, f in demo.fns.items()
                             if (box._id, "submit") in [tuple(t) for t in f.targets])
    after = next(f for f in demo.fns.values() if getattr(f, "trigger_after", None) == submit_id)
    chat = next(o for o in submit.outputs if isinstance(o, gr.Chatbot))
    state = SessionState(demo)

    def yielding(prediction):
        return lambda: asyncio.run(demo.postprocess_data(submit, prediction, state))

    def rebuild(block):
        def run():
            kwargs = {**block.constructor_args, "render": False}
            kwargs.pop("value", None)
            state[block._id] = block.__class__(**kwargs)
            state._update_config(block._id)
        return run

    times = common.alternate({"nothing new (gr.skip())": yielding(gr.skip()),
                              "a step counter (the chat only)": yielding({chat: STEP})}, args.runs)
    outputs = [(o, "the event's") for o in submit.outputs if not o.stateful]
    outputs += [(o, "after the turn") for o in after.outputs if not o.stateful]
    each = common.alternate({f"{type(o).__name__} {o.elem_id or o.label or ''} ({where})": rebuild(o)
                             for o, where in outputs}, args.runs)
    section = common.header("Chat event yields: server time per yield (bench_yields.py)", args,
                            f"the Enter event's outputs: {len(submit.outputs)} "
                            f"({', '.join(type(o).__name__ for o in submit.outputs)})")
    section += "\n" + table(["yield", "ms"], [[k, f"{med(v) * 1e3:.2f}"] for k, v in times.items()])
    section += "\n\n" + table(["an output left out of a yield: its rebuild", "ms"],
                              [[k, f"{med(v) * 1e3:.2f}"] for k, v in each.items()]) + "\n"
    common.report(section, args)


if __name__ == "__main__":
    main()
