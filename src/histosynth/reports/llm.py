"""LLM summaries through the official `openai` SDK: any OpenAI-compatible server via `base_url`.

The SDK's own retries are off (`max_retries=0`): this module retries itself so that every request
is counted and a 429's Retry-After is honoured. A reply that is over budget, empty, incomplete or
not in the requested format is re-prompted with concrete feedback ("41 tokens, limit 35") up to
`max_attempts` times; then deterministic sentence-level compression (or, failing that, the
extractive summary) takes over. Every attempt is recorded. The API key comes from the
environment only and is never logged or stored.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlparse

import yaml

from ..config import SummariesConfig
from ..console import HistosynthError
from ..tokenizers import Tokenizer
from .extractive import BACKEND_MODEL, PROMPT_VERSION, compress_sentences, problems, summarize_report

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


# ---- prompts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    version: str
    system: str
    turns: tuple[dict, ...]        # {"user": template, "max_tokens": bool}
    reply: str                     # "json" ({"findings": [...], "summary": "..."}) or "text"
    feedback: str
    findings: tuple[str, ...]
    words_per_token: float = 0.6   # words asked for per budget token


def load_prompt(version: str, findings: list[str] | None = None) -> Prompt:
    try:
        text = resources.files("histosynth.prompts").joinpath(f"{version}.yaml").read_text()
    except FileNotFoundError:
        raise HistosynthError(f"prompt '{version}': no such template in histosynth/prompts") from None
    data = yaml.safe_load(text)
    return Prompt(
        version=data["version"], system=data["system"], turns=tuple(data["turns"]), reply=data["reply"],
        feedback=data["feedback"], findings=tuple(findings or data["findings"]),
        words_per_token=float(data.get("words_per_token", 0.6)),
    )


# ---- redaction --------------------------------------------------------------------------------
def redact(text: str) -> tuple[str, dict[str, int]]:
    """Identifiers out (histosynth.reports.redact, Presidio): imported only for non-local backends."""
    from .redact import redact as presidio_redact

    return presidio_redact(text)


def is_local(base_url: str | None) -> bool:
    return base_url is not None and (urlparse(base_url).hostname or "") in LOCAL_HOSTS


# ---- robust client ----------------------------------------------------------------------------
class RequestFailed(RuntimeError):
    """A request that still failed after all retries (or failed in a way retrying cannot fix)."""


class MalformedReply(ValueError):
    pass


class RateLimiter:
    """At most `per_second` request starts per second, shared by all threads."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        time.sleep(max(0.0, start - now))


@dataclass
class Reply:
    text: str
    finish_reason: str | None
    model: str | None
    system_fingerprint: str | None
    requests: int                  # HTTP requests this reply took (retries included)
    errors: list[str] = field(default_factory=list)


def retry_after_s(response) -> float:
    """Seconds a 429/503 asks us to wait (Retry-After as seconds or HTTP date, or retry-after-ms)."""
    if response is None:
        return 0.0
    headers = response.headers
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else 0.0


class ChatClient:
    def __init__(self, cfg: SummariesConfig):
        import openai

        self.cfg = cfg
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            if not is_local(cfg.base_url):
                raise HistosynthError("OPENAI_API_KEY is not set (the openai backend reads the key from the environment only)")
            key = "local"  # local servers (vLLM, Ollama, llama.cpp) accept any key
        self.client = openai.OpenAI(api_key=key, base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s)
        self.limiter = RateLimiter(cfg.requests_per_second)
        self.requests = 0
        self.lock = threading.Lock()

    def complete(self, messages: list[dict], max_tokens: int | None = None) -> Reply:
        import openai

        errors: list[str] = []
        for attempt in range(self.cfg.request_retries + 1):
            self.limiter.wait()
            with self.lock:
                self.requests += 1
            wait = self.cfg.backoff_s * 2 ** attempt * (1 + 0.25 * random.random())
            try:
                return self._request(messages, max_tokens, attempt + 1, errors)
            except openai.RateLimitError as exc:
                wait = max(wait, retry_after_s(exc.response))  # never earlier than the server asks
                errors.append(f"429 rate limited (retry after {retry_after_s(exc.response):g} s)")
            except openai.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code not in (408, 409):
                    raise RequestFailed(f"HTTP {exc.status_code}: {exc.message}") from None
                wait = max(wait, retry_after_s(exc.response))
                errors.append(f"HTTP {exc.status_code}")
            except openai.APITimeoutError:
                errors.append(f"timeout after {self.cfg.timeout_s:g} s")
            except openai.APIConnectionError as exc:
                errors.append(f"connection error: {exc.__class__.__name__}")
            except (MalformedReply, json.JSONDecodeError, openai.APIResponseValidationError, ValueError) as exc:
                errors.append(f"malformed reply: {exc.__class__.__name__}")
            if attempt < self.cfg.request_retries:
                time.sleep(wait)
        raise RequestFailed("; ".join(errors))

    def _request(self, messages, max_tokens, n_requests, errors) -> Reply:
        kwargs = dict(model=self.cfg.model, messages=messages, temperature=self.cfg.temperature, seed=self.cfg.seed)
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        raw = self.client.chat.completions.with_raw_response.create(**kwargs)
        completion = raw.parse()
        choices = getattr(completion, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise MalformedReply("no choices in the reply")
        content = choices[0].message.content
        if content is not None and not isinstance(content, str):
            raise MalformedReply("message content is not text")
        return Reply(text=content or "", finish_reason=choices[0].finish_reason, model=completion.model,
                     system_fingerprint=getattr(completion, "system_fingerprint", None),
                     requests=n_requests, errors=list(errors))


# ---- summarizing one report -------------------------------------------------------------------
def parse_reply(prompt: Prompt, text: str) -> tuple[str, list[str], list[str]]:
    """(summary, findings, format problems) from a reply in the prompt's format."""
    if prompt.reply == "text":
        return text.strip(), [], []
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        data = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), str):
        return text.strip(), [], ['reply is not the requested JSON object {"findings": [...], "summary": "..."}']
    findings = [str(f) for f in data.get("findings") or [] if str(f).strip()]
    return data["summary"].strip(), findings, []


class LLMSummarizer:
    def __init__(self, cfg: SummariesConfig, tokenizer: Tokenizer, budget: int, client: ChatClient | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.budget = budget
        self.prompt = load_prompt(cfg.prompt, cfg.findings or None)
        self.client = client or ChatClient(cfg)
        self.redacting = cfg.redact and not is_local(cfg.base_url)
        if self.redacting:  # fail before the first request when the deid extra is missing
            from .redact import analyzer

            analyzer()

    def fill(self, template: str, report: str, problems_text: str = "") -> str:
        words = max(3, round(self.budget * self.prompt.words_per_token))
        return template.format(report=report, findings=", ".join(self.prompt.findings), budget=self.budget,
                               words=words, tokenizer=self.tokenizer.name, problems=problems_text)

    def summarize(self, case_id: str, text: str) -> dict:
        """One case -> a row (summary, n_tokens, attempts, status, attempt_log, ...). Never over budget."""
        redactions: dict[str, int] = {}
        if self.redacting:
            text, redactions = redact(text)
        messages = [{"role": "system", "content": self.prompt.system}]
        log: list[dict] = []
        last = Reply("", None, None, None, 0)
        try:
            for turn in self.prompt.turns[:-1]:  # e.g. the paper's extraction turn, once per case
                messages.append({"role": "user", "content": self.fill(turn["user"], text)})
                last = self.client.complete(messages)
                messages.append({"role": "assistant", "content": last.text})
                log.append({"turn": "extract", "requests": last.requests, "errors": last.errors})
            extracted = [ln.strip("-* \t") for ln in last.text.splitlines() if ln.strip("-* \t")]
            final = self.prompt.turns[-1]
            messages.append({"role": "user", "content": self.fill(final["user"], text)})
            max_tokens = self.budget if final.get("max_tokens") else None
            summary = ""
            for attempt in range(1, self.cfg.max_attempts + 1):
                last = self.client.complete(messages, max_tokens=max_tokens)
                summary, findings, issues = parse_reply(self.prompt, last.text)
                issues = issues + problems(summary, self.budget, self.tokenizer)
                if last.finish_reason == "length" and not any(i.startswith("incomplete") for i in issues):
                    issues.append("incomplete: the reply was cut at max_tokens")
                log.append({"attempt": attempt, "reply": last.text, "n_tokens": self.tokenizer.count(summary),
                            "problems": issues, "finish_reason": last.finish_reason,
                            "requests": last.requests, "errors": last.errors})
                if not issues:
                    return self.row(case_id, summary, findings or extracted, attempt, "ok", log, last, redactions)
                messages += [{"role": "assistant", "content": last.text},
                             {"role": "user", "content": self.fill(self.prompt.feedback, text, "; ".join(issues))}]
            compressed = compress_sentences(summary, self.budget, self.tokenizer) if summary else None
            how = "sentences"
            if compressed is None:
                compressed, how = summarize_report(text, self.budget, self.tokenizer).text, "extractive"
            log.append({"fallback": how})
            return self.row(case_id, compressed, extracted, self.cfg.max_attempts, "fallback", log, last, redactions,
                            llm_wrote=how == "sentences")
        except RequestFailed as exc:
            log.append({"error": str(exc)})
            fallback = summarize_report(text, self.budget, self.tokenizer)
            attempts = sum("attempt" in e for e in log) + 1  # the attempt whose request failed
            return self.row(case_id, fallback.text, list(fallback.findings), attempts, "error", log, last, redactions,
                            llm_wrote=False)

    def row(self, case_id, summary, findings, attempts, status, log, last: Reply, redactions,
            llm_wrote: bool = True) -> dict:
        """A row names the backend that wrote its text: the extractive one when the LLM failed or was replaced."""
        writer = ("openai", self.cfg.model, self.prompt.version) if llm_wrote else \
            ("extractive", BACKEND_MODEL, PROMPT_VERSION)
        return {
            "case_id": case_id, "budget": self.budget, "summary": summary,
            "n_tokens": self.tokenizer.count(summary), "tokenizer": self.tokenizer.name, "backend": writer[0],
            "model": writer[1], "prompt_version": writer[2], "requested_model": self.cfg.model, "attempts": attempts,
            "status": status, "findings": findings, "reply_model": last.model,
            "system_fingerprint": last.system_fingerprint,
            "requests": sum(e.get("requests", 0) for e in log), "redactions": redactions,
            "attempt_log": json.dumps(log, ensure_ascii=False),
        }
