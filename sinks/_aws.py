"""What the AWS sinks (s3, firehose) share: how they build a botocore client (one home for the region,
endpoint, static keys and credential chain, and for the parsed AWS models, loaded once per process) and how
they read a botocore error (the retryable error codes and the ClientError/credentials/parameter rules), so
both sinks build and judge alike."""

from __future__ import annotations

import gzip
import os
import threading
from collections.abc import Mapping
from typing import Any

import orjson

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


_lock = threading.Lock()
_loaders: dict[str | None, Any] = {}


def aws_client(service: str, opts: Mapping[str, Any], **config: Any) -> Any:
    """A botocore client of ``service`` for a sink's ``region``, ``endpoint_url`` and static keys, with
    ``config`` as botocore.config.Config options.

    Without static keys the client takes botocore's default credential chain, as boto3 did: environment,
    shared config and credentials files, web identity (EKS IRSA), EKS Pod Identity and container
    credentials, instance metadata. Each client has its own botocore session (its own chain and
    credential cache, as a boto3.Session gave it); the parsed models and endpoint data are shared by all
    (see _data_loader).
    """
    import botocore.session
    from botocore.config import Config

    secret, token = opts["secret_access_key"], opts["session_token"]
    with _lock:  # botocore sessions are not thread-safe; the worker may build a client after open()
        session = botocore.session.Session()
        session.register_component("data_loader", _data_loader(session.get_config_variable("data_path")))
        return session.create_client(
            service,
            # botocore reads AWS_DEFAULT_REGION only; EKS (IRSA, Pod Identity) also sets AWS_REGION
            region_name=opts["region"] or os.environ.get("AWS_REGION") or None,
            endpoint_url=opts["endpoint_url"] or None,
            aws_access_key_id=opts["access_key_id"] or None,
            aws_secret_access_key=secret.reveal() if secret else None,
            aws_session_token=token.reveal() if token else None,
            config=Config(**config),
        )


def _data_loader(data_path: str | None) -> Any:
    """One botocore data loader per process (per AWS_DATA_PATH): the endpoints of every AWS service (7 MB
    as botocore parses it) and each service model are read once, whichever sinks and credential providers
    (STS for IRSA) build clients, and parsed into plain dicts."""
    from botocore.loaders import JSONFileLoader, create_loader

    class DictJSONFileLoader(JSONFileLoader):  # type: ignore[misc]
        """botocore's JSON files as plain dicts: botocore parses them into OrderedDicts, which take 1.6 times
        the memory (11.7 MB against 7.4 MB for an S3 client's endpoints, model and rule set); dicts keep the
        order, which is all botocore relies on."""

        def load_file(self, file_path: str) -> Any:
            for ext, opener in ((".json", open), (".json.gz", gzip.open)):
                if os.path.isfile(file_path + ext):
                    with opener(file_path + ext, "rb") as f:
                        data = orjson.loads(f.read())
                    return _trimmed(file_path, data)
            return super().load_file(file_path)  # a format a later botocore may add

    if data_path not in _loaders:
        loader = create_loader(data_path)
        loader.file_loader = DictJSONFileLoader()
        _loaders[data_path] = loader
    return _loaders[data_path]


def _trimmed(file_path: str, data: Any) -> Any:
    if os.path.basename(file_path) == "endpoints":
        return _used_endpoints(data)
    if file_path.replace(os.sep, "/").endswith(S3_MODEL):
        return _used_operations(data, S3_OPERATIONS)
    return data


# What the s3 sink calls (through boto3's managed upload), and what botocore calls on its behalf (S3 Express
# sessions; HeadBucket when it follows a region redirect). The S3 model has ~100 operations (2.5 MB parsed),
# held for the life of the client.
S3_MODEL = "/s3/2006-03-01/service-2"
S3_OPERATIONS = frozenset({"PutObject", "HeadBucket", "CreateMultipartUpload", "UploadPart",
                           "CompleteMultipartUpload", "AbortMultipartUpload", "CreateSession"})


def _used_operations(model: Any, keep: frozenset[str]) -> Any:
    """A service model with only the operations in ``keep`` and the shapes they reach."""
    operations, shapes = model.get("operations"), model.get("shapes")
    if not isinstance(operations, dict) or not isinstance(shapes, dict) or not keep <= operations.keys():
        return model  # not the layout this knows, or an operation is missing: leave it whole
    kept_ops = {name: op for name, op in operations.items() if name in keep}
    refs = [ref for op in kept_ops.values() for ref in (op.get("input"), op.get("output"), *op.get("errors", ()))]
    todo = [ref["shape"] for ref in refs if isinstance(ref, dict) and "shape" in ref]
    reached: dict[str, Any] = {}
    while todo:
        name = todo.pop()
        if name in reached or name not in shapes:
            continue
        shape = reached[name] = shapes[name]
        for ref in (*shape.get("members", {}).values(), shape.get("member"), shape.get("key"), shape.get("value")):
            if isinstance(ref, dict) and "shape" in ref:
                todo.append(ref["shape"])
    return {**model, "operations": kept_ops, "shapes": reached}


# The services whose clients this process builds, by endpoint prefix (the keys of botocore's endpoints.json):
# the sinks' (s3, firehose) and the credential providers' (STS for IRSA and assumed roles, SSO and its OIDC).
ENDPOINT_SERVICES = frozenset({"s3", "firehose", "sts", "portal.sso", "oidc"})


def _used_endpoints(data: Any) -> Any:
    """botocore's endpoints.json with only :data:`ENDPOINT_SERVICES`: the legacy endpoint resolver every client
    keeps holds the whole file (every AWS service in every partition, 4 MB parsed) for the process's life.
    Any other service still resolves, from its partition's defaults, as a service newer than the file does."""
    if not isinstance(data, dict) or not isinstance(data.get("partitions"), list):
        return data  # not the layout this knows: leave it whole
    partitions = []
    for partition in data["partitions"]:
        services = partition.get("services") if isinstance(partition, dict) else None
        if isinstance(services, dict):
            partition = {**partition, "services": {k: v for k, v in services.items() if k in ENDPOINT_SERVICES}}
        partitions.append(partition)
    return {**data, "partitions": partitions}
