"""Tests of remote engines: `ledgerchat engine serve` and (opt-in) a real vLLM as upstreams."""
