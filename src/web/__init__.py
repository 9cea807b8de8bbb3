"""The ledgerchat web service: composes the ledger and the inference engine into accounts,
billed streaming chat, history, admin and an OpenAI-compatible API (Litestar), and hosts the
Gradio UI. Entry points: `web.app.create_app(settings)`, `web.services.Services`, and the
`ledgerchat` command (`web.cli`)."""
