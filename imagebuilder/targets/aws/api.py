"""Talking to AWS: boto3 sessions and clients, every botocore error as one line, and retries.

boto3 is an optional dependency (``pip install imagebuilder[aws]``), imported only when a
session is made; the AMI publishing (:mod:`.aws`) and the snapshot upload (:mod:`.ebs`) share
what is here.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ...errors import FetchError, HostError, ImageBuilderError, NotFoundError, UserError

RETRY_ATTEMPTS = 8
"""Attempts per block (throttling, "snapshot not ready", transient server errors)."""
BACKOFF = 0.25
"""First retry delay in seconds; doubled per attempt, capped at :data:`BACKOFF_MAX`."""
BACKOFF_MAX = 8.0
_RETRY_CODES = frozenset({
    "ThrottlingException", "RequestThrottledException", "Throttling", "RequestLimitExceeded",
    "ServiceUnavailableException", "InternalServerException", "InternalServerError",
    "ConcurrentLimitExceededException", "SlowDown",
})
_DENIED_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure",
    "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "OptInRequired",
})
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class Counted(Protocol):
    """What :func:`with_retries` counts into (an upload's statistics)."""

    requests: int
    retries: int


def _boto() -> Any:
    try:
        import boto3
    except ImportError:
        raise HostError("publishing to AWS needs boto3: pip install 'imagebuilder[aws]'") from None
    return boto3


def make_session(region: str, profile: str | None = None) -> Any:
    """A boto3 session with the usual credential chain (environment, profile, SSO, role)."""
    boto3 = _boto()
    if not REGION_RE.fullmatch(region):
        raise UserError(f"'{region}' is not an AWS region name: use one like us-east-1")
    with aws_errors(region):
        return boto3.Session(profile_name=profile, region_name=region)


def client(session: Any, service: str, region: str, *, workers: int = 8,
            retries: int | None = None) -> Any:
    from botocore.config import Config
    config = Config(max_pool_connections=max(10, workers + 2),
                    retries={"max_attempts": retries} if retries is not None else None,
                    connect_timeout=10, read_timeout=60)
    with aws_errors(region):
        return session.client(service, region_name=region, config=config)


@contextmanager
def aws_errors(region: str, kms_key_id: str | None = None) -> Iterator[None]:
    """Turn botocore's exceptions into one-line ImageBuilderErrors."""
    from botocore import exceptions as bx
    try:
        yield
    except ImageBuilderError:
        raise
    except (bx.NoCredentialsError, bx.PartialCredentialsError):
        raise UserError("no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY, pass --profile, or run 'aws sso login'") from None
    except bx.ProfileNotFound as e:
        raise UserError(f"{e}: check --profile and ~/.aws/config") from None
    except bx.NoRegionError:
        raise UserError("no AWS region given: pass --region") from None
    except bx.EndpointConnectionError as e:
        if not _known_region(region):
            raise UserError(f"unknown AWS region '{region}': use one like us-east-1 "
                            "(aws ec2 describe-regions lists them)") from None
        raise FetchError(f"cannot reach AWS in region {region} ({e.kwargs.get('endpoint_url')})"
                         ": check the region name and the network") from None
    except bx.ClientError as e:
        raise _client_error(e, region, kms_key_id) from None
    except bx.BotoCoreError as e:
        raise FetchError(f"AWS in region {region}: {e}") from None


def _known_region(region: str) -> bool:
    """Whether botocore knows ``region`` in any partition (aws, aws-cn, aws-us-gov, ...)."""
    import boto3
    session = boto3.Session()
    return any(region in session.get_available_regions("ec2", partition)
               for partition in session.get_available_partitions())


def _code(e: Any) -> tuple[str, str]:
    err = getattr(e, "response", {}).get("Error", {})
    return str(err.get("Code", "")), str(err.get("Message", "")).strip()


def _client_error(e: Any, region: str, kms_key_id: str | None) -> ImageBuilderError:
    code, message = _code(e)
    op = getattr(e, "operation_name", "request")
    lowered = message.lower()
    if kms_key_id and ("kms" in code.lower() or "kms" in lowered):
        return UserError(f"KMS key {kms_key_id} cannot be used in region {region} ({code}: "
                         f"{message}): check --kms-key-id and the key's policy")
    if code in _DENIED_CODES:
        return UserError(f"AWS denied {op} in region {region} ({code}: {message}): check the "
                         "credentials' permissions and that the region is enabled")
    if code.endswith(".NotFound") or code.endswith("NotFoundException"):
        return NotFoundError(f"AWS {op} in region {region}: {code}: {message}")
    return FetchError(f"AWS {op} failed in region {region}: {code}: {message}")


def _retryable(e: Exception) -> bool:
    from botocore import exceptions as bx
    if isinstance(e, bx.ClientError):
        code, message = _code(e)
        if code in _RETRY_CODES:
            return True
        lowered = message.lower()
        return code == "ValidationException" and ("not ready" in lowered or "pending" in lowered)
    return isinstance(e, bx.EndpointConnectionError | bx.ConnectionClosedError
                      | bx.ReadTimeoutError | bx.ConnectTimeoutError)


def with_retries(call: Callable[[], Any], stats: Counted, lock: threading.Lock) -> Any:
    delay = BACKOFF
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        with lock:
            stats.requests += 1
        try:
            return call()
        except Exception as e:
            if attempt == RETRY_ATTEMPTS or not _retryable(e):
                raise
            with lock:
                stats.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
    raise AssertionError("unreachable")
