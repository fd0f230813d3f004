"""How the AWS sinks (s3, firehose) read a boto3/botocore error: one home for the retryable error codes
and the ClientError/credentials/parameter rules, so both sinks judge the same answer alike."""

from __future__ import annotations

from eventrouter import PermanentError, RetryableError, SinkError

# error codes AWS documents as transient (throttling, service busy, clock or token expiry), S3's and
# Firehose's together; any 429 or 5xx is retryable too
RETRYABLE_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "ServiceUnavailableException", "InternalError", "InternalFailure",
    "InternalServerError", "RequestTimeout", "Throttling", "ThrottlingException", "LimitExceededException",
    "RequestLimitExceeded", "OperationAborted", "ExpiredToken", "ExpiredTokenException", "RequestTimeTooSkewed",
})

CREDENTIALS_HINT = "set up IRSA or Pod Identity, or give access_key_id and secret_access_key"


def classify_aws_error(exc: BaseException, *, missing_credentials_retryable: bool) -> SinkError | None:
    """RetryableError or PermanentError for a ClientError, missing credentials or a parameter error;
    None for anything else (the sink decides: usually a transport error, retryable)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        text = f"{code or status}: {err.get('Message') or exc}"
        if code in RETRYABLE_CODES or status == 429 or status >= 500:
            return RetryableError(text)
        return PermanentError(text)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        kind = RetryableError if missing_credentials_retryable else PermanentError
        return kind(f"no AWS credentials found ({exc}); {CREDENTIALS_HINT}")
    if isinstance(exc, bx.ParamValidationError):
        return PermanentError(str(exc))
    return None
