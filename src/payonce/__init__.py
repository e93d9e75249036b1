"""payonce: make money-moving calls happen exactly once.

``import payonce`` loads no third-party module; backends, gateways and integrations are optional
extras imported on use.
"""

from payonce._clock import SystemClock
from payonce._errors import (
    ConfigurationError,
    ConflictError,
    GatewayError,
    GatewayRejectedError,
    GatewayUnavailableError,
    InProgressError,
    IntentError,
    KeyReuseError,
    LeaseLostError,
    LedgerCorruptedError,
    LedgerError,
    OutcomeUnknownError,
    PaymentDeclinedError,
    PayonceError,
    PolicyDeniedError,
    StoreClosedError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from payonce._guard import AsyncGuard, Guard
from payonce._intent import Intent, format_amount
from payonce._ledger import (
    LedgerReport,
    aseal_checkpoint,
    averify_ledger,
    seal_checkpoint,
    verify_ledger,
)
from payonce._model import (
    Attempt,
    Checkpoint,
    Entry,
    Event,
    GatewayAnswer,
    Lease,
    Outcome,
    OutcomeClass,
    Record,
    Status,
)
from payonce._once import once
from payonce._protocols import AsyncGateway, AsyncStore, Clock, Gateway, Store
from payonce._reconciler import (
    AsyncReconciler,
    AuditReport,
    Discrepancy,
    Reconciler,
    ReconcileReport,
)
from payonce._retry import RetryPolicy
from payonce.stores import MemoryStore, SQLiteStore, ThreadedAsyncStore, open_store

__version__ = "0.1.0"

__all__ = [
    "AsyncGateway",
    "AsyncGuard",
    "AsyncReconciler",
    "AsyncStore",
    "Attempt",
    "AuditReport",
    "Checkpoint",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "Discrepancy",
    "Entry",
    "Event",
    "Gateway",
    "GatewayAnswer",
    "GatewayError",
    "GatewayRejectedError",
    "GatewayUnavailableError",
    "Guard",
    "InProgressError",
    "Intent",
    "IntentError",
    "KeyReuseError",
    "Lease",
    "LeaseLostError",
    "LedgerCorruptedError",
    "LedgerError",
    "LedgerReport",
    "MemoryStore",
    "Outcome",
    "OutcomeClass",
    "OutcomeUnknownError",
    "PaymentDeclinedError",
    "PayonceError",
    "PolicyDeniedError",
    "ReconcileReport",
    "Reconciler",
    "Record",
    "RetryPolicy",
    "SQLiteStore",
    "Status",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreMissingError",
    "StoreUnavailableError",
    "SystemClock",
    "ThreadedAsyncStore",
    "aseal_checkpoint",
    "averify_ledger",
    "format_amount",
    "once",
    "open_store",
    "seal_checkpoint",
    "verify_ledger",
]
