"""Models served by another process over the OpenAI chat-completions protocol (vLLM, SGLang,
llama-server, TGI, Ollama, `ledgerchat engine serve`): the catalog's `remote` source kind
(`source.py`), the URL pool (`urls.py`), the wire format (`wire.py`), one request's stream
(`stream.py`) and the backend that serves every remote entry (`backend.py`)."""
