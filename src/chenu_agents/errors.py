"""Typed errors. Only the Ansible edge (module_utils) turns them into a failure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is and what was expected."""

    file: str
    field: str
    expected: str
    line: int | None = None
    rule: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        rule = f" [{self.rule}]" if self.rule else ""
        return f"{where}: {self.field}: {self.expected}{rule}"


class ChenuError(Exception):
    """Base of every error the package raises on purpose."""

    def __init__(self, message: str, problems: list[Problem] | tuple[Problem, ...] = ()):
        self.problems = tuple(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)

    def details(self) -> dict:
        return {
            "error": type(self).__name__,
            "problems": [p.__dict__ for p in self.problems],
        }


class SpecError(ChenuError):
    """config.yaml or tools/definitions.yaml does not match its schema."""


class PolicyViolation(ChenuError):
    """The agent folder breaks the security policy."""


class BundleError(ChenuError):
    """A bundle cannot be built or read safely."""


class KeyStoreError(ChenuError):
    """A signing key cannot be created, found, rotated or used."""


class SigningError(ChenuError, ValueError):
    """A statement cannot be signed as asked (bad agent name or version, validity out of bounds)."""


class VerificationError(ChenuError):
    """A signed statement or its bundle must not be trusted."""


class TamperedBundle(VerificationError):
    """The bundle's bytes do not hash to the signed digest."""


class BadSignature(VerificationError):
    """The signature does not verify under the key it names (wrong key or altered statement)."""


class UnknownKey(VerificationError):
    """The statement names a key the trust store does not hold."""


class RevokedKey(VerificationError):
    """The statement was signed by a revoked key."""


class KeyNotValid(VerificationError):
    """The statement was issued outside its key's validity window."""


class ExpiredStatement(VerificationError):
    """The statement's expiry time has passed (or it is not yet valid)."""


class StatementTooLong(ExpiredStatement):
    """The statement claims a lifetime (expires_at - issued_at) longer than the verifier allows."""


class StatementMismatch(VerificationError):
    """The statement is for another agent or version than the one being loaded (mix-and-match)."""


class RollbackRefused(VerificationError):
    """The version is lower than the highest already accepted and no rollback was requested."""


class VersionPinned(VerificationError):
    """This version of the agent was accepted before with another digest, and no override was forced."""


class LifecycleError(ChenuError):
    """A lifecycle transition is not allowed."""


class SandboxError(ChenuError):
    """A tool call cannot be set up in the sandbox (interpreter missing, grant refused)."""


class ProviderError(ChenuError):
    """An LLM provider call failed; `retryable` says whether another attempt may succeed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        provider: str | None = None,
    ):
        self.retryable = retryable
        self.status = status
        self.provider = provider
        super().__init__(message)


class RuntimeConfigError(ChenuError):
    """The agent runtime's settings, tokens file or state file are unusable."""


class TaskError(ChenuError):
    """A task could not be answered; `status` is the HTTP status the runtime answers with."""

    def __init__(self, message: str, *, status: int = 500):
        self.status = status
        super().__init__(message)
