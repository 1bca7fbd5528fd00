"""The generation service every door uses: the chat (ui/), the APIs (apis/) and the CLI (cli/) build one
`engine.request.Request` with `studio.requests`, and run it through the same line, stream and keeping.

- service.py   the `Studio` (engine, default model, line, library, previews) and per-model data for any door
- requests.py  the one Request builder: a door's values, untouched ones None, become the engine's Request
- parse.py     one parser each for what several doors accept: LoRA specs, base64 images, numbers, canvas fit
- line.py      the line of generations waiting for the engine (bounded, each told its place)
- stream.py    one generation run in its turn: progress and previews streamed out, cancel within a step
- jobs.py      the programmatic doors' generations (progress, interrupt) and keeping their images
- files.py     folders of files handed out by link, each kept an hour
- previews.py  when a live preview pays for itself
- ray_serve.py the engine on Ray Serve replicas (`--ray`)

No gradio and no HTTP here; torch only through the engine.
"""
