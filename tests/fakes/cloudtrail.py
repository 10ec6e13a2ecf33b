"""A local emulator of CloudTrail ``LookupEvents`` (moto does not implement it).

It speaks the documented wire protocol (JSON 1.1 over HTTP, SigV4-signed, errors as
``{"__type": ..., "message": ...}`` with status 400) rather than whatever our code happens to send,
so a client that builds a wrong request fails here as it would against AWS. Use it with real boto3::

    with CloudTrailEmulator() as ct:
        ct.add(make_event("CreateUser", at, "alice"), make_event("ConsoleLogin", at2, "alice"))
        client = boto3.client("cloudtrail", endpoint_url=ct.url, region_name="us-east-1")

Fault injection: ``throttle_next(n)``, ``fail_next(n, ...)``, ``deny_next(n)``,
``repeat_next_token()``; every request is kept in ``requests`` so tests can count calls.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
import uuid
from typing import Any, Iterable

from ._server import JsonHandler, LocalServer

TARGET_PREFIX = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101."
LOOKUP_TARGET = TARGET_PREFIX + "LookupEvents"
CONTENT_TYPE = "application/x-amz-json-1.1"
ATTRIBUTE_KEYS = ("EventId", "EventName", "ReadOnly", "Username", "ResourceType", "ResourceName",
                  "EventSource", "AccessKeyId")
DEFAULT_ACCOUNT = "123456789012"
DEFAULT_ACTOR = f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/admin"

# Credential scope of a SigV4 Authorization header: AKID/date/region/service/aws4_request
_SIGV4 = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/"
                    r"aws4_request, ?SignedHeaders=[^,]+, ?Signature=[0-9a-f]{64}$")
_IAM_SOURCE = "iam.amazonaws.com"


class _ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _utc(at: dt.datetime | str) -> dt.datetime:
    if isinstance(at, str):
        at = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    return at.astimezone(dt.timezone.utc)


def _iso(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _identity(arn: str) -> dict[str, Any]:
    """A CloudTrail ``userIdentity`` for an IAM user, assumed role or root ARN."""
    account = arn.split(":")[4] if arn.count(":") >= 5 else DEFAULT_ACCOUNT
    resource = arn.split(":", 5)[-1]
    identity: dict[str, Any] = {"arn": arn, "accountId": account,
                                "principalId": "AIDA" + uuid.uuid5(uuid.NAMESPACE_URL, arn)
                                .hex[:17].upper()}
    if resource == "root":
        identity["type"] = "Root"
    elif resource.startswith("assumed-role/"):
        identity["type"] = "AssumedRole"
        identity["principalId"] = "AROA" + identity["principalId"][4:] + ":" + \
            resource.rsplit("/", 1)[-1]
    else:
        identity["type"] = "IAMUser"
        identity["userName"] = resource.rsplit("/", 1)[-1]
    return identity


def _username(identity: dict[str, Any]) -> str:
    """The top-level ``Username`` LookupEvents shows for an identity."""
    if identity["type"] == "Root":
        return "root"
    if identity["type"] == "AssumedRole":
        return identity["principalId"].split(":", 1)[1]
    return identity["userName"]


def make_event(name: str, at: dt.datetime | str, user_name: str | None, *,
               actor: str = DEFAULT_ACTOR, request_parameters: dict | None = None,
               response_elements: dict | None = None, error_code: str | None = None,
               source: str | None = None,
               event_id: str | None = None, account_id: str = DEFAULT_ACCOUNT,
               region: str = "us-east-1") -> dict[str, Any]:
    """A LookupEvents event as AWS returns it.

    ``user_name`` is the IAM user the event is about (``requestParameters.userName``); for
    ``ConsoleLogin`` it is the user signing in, who is then also the actor. ``actor`` is the ARN of
    the caller for every other event.
    """
    at = _utc(at)
    event_id = event_id or str(uuid.uuid4())
    if name == "ConsoleLogin":
        source = source or "signin.amazonaws.com"
        identity = _identity(f"arn:aws:iam::{account_id}:user/{user_name}")
        identity["accessKeyId"] = ""
        if response_elements is None:
            response_elements = {"ConsoleLogin": "Failure" if error_code else "Success"}
        params = request_parameters
        event_type, read_only = "AwsConsoleSignIn", "false"
        resources: list[dict[str, str]] = []
    else:
        source = source or _IAM_SOURCE
        identity = _identity(actor)
        # A falsy user_name leaves userName out, as in a self-service CreateAccessKey.
        params = {**({"userName": user_name} if user_name else {}), **(request_parameters or {})}
        event_type = "AwsApiCall"
        read_only = "true" if name.startswith(("Get", "List", "Describe")) else "false"
        # Like AWS, the IAM entities a call names come back as Resources.
        resources = []
        if params.get("userName"):
            resources.append({"ResourceType": "AWS::IAM::User", "ResourceName": params["userName"]})
        if params.get("groupName"):
            resources.append({"ResourceType": "AWS::IAM::Group",
                              "ResourceName": params["groupName"]})
        if params.get("accessKeyId"):
            resources.append({"ResourceType": "AWS::IAM::AccessKey",
                              "ResourceName": params["accessKeyId"]})
        if params.get("policyArn"):
            resources.append({"ResourceType": "AWS::IAM::Policy",
                              "ResourceName": params["policyArn"]})
    access_key = "ASIA" + uuid.uuid5(uuid.NAMESPACE_OID, event_id).hex[:16].upper()
    if name != "ConsoleLogin":
        identity["accessKeyId"] = access_key
    record: dict[str, Any] = {
        "eventVersion": "1.08", "userIdentity": identity, "eventTime": _iso(at),
        "eventSource": source, "eventName": name, "awsRegion": region,
        "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.0",
        "requestParameters": params, "responseElements": response_elements,
        "eventID": event_id, "readOnly": read_only == "true", "eventType": event_type,
        "managementEvent": True, "recipientAccountId": account_id,
        "eventCategory": "Management",
    }
    if name == "ConsoleLogin":
        record["additionalEventData"] = {"LoginTo": "https://console.aws.amazon.com/console/home",
                                         "MobileVersion": "No", "MFAUsed": "No"}
        if response_elements.get("ConsoleLogin") == "Failure":
            record["errorMessage"] = "Failed authentication"
    if error_code:
        record["errorCode"] = error_code
        record.setdefault("errorMessage", f"{error_code}: request failed")
    return {
        "EventId": event_id, "EventName": name, "ReadOnly": read_only,
        "AccessKeyId": "" if name == "ConsoleLogin" else access_key,
        "EventTime": at, "EventSource": source, "Username": _username(identity),
        "Resources": resources, "CloudTrailEvent": json.dumps(record),
    }


def make_many(count: int, start: dt.datetime | str, *, name: str = "CreateUser",
              every: dt.timedelta = dt.timedelta(minutes=1), prefix: str = "user",
              **kwargs: Any) -> list[dict[str, Any]]:
    """``count`` events ``every`` apart from ``start``, about users ``<prefix>-0000`` onwards."""
    start = _utc(start)
    return [make_event(name, start + i * every, f"{prefix}-{i:04d}", **kwargs)
            for i in range(count)]


class CloudTrailEmulator(LocalServer):
    """``LookupEvents`` on 127.0.0.1 (ephemeral port) in a background thread."""

    def __init__(self, events: Iterable[dict[str, Any]] = ()):
        self._lock = threading.Lock()
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._tokens: dict[str, tuple[str, int]] = {}
        self._faults: list[tuple[int, str, str]] = []   # (status, code, message), one per request
        self._repeat_tokens = False
        self.requests: list[dict[str, Any]] = []
        self.add(*events)

    # --- seeding and faults -------------------------------------------------------------------
    def add(self, *events: dict[str, Any]) -> None:
        with self._lock:
            for event in events:
                region = json.loads(event["CloudTrailEvent"]).get("awsRegion", "us-east-1")
                self._events.append((region, {**event, "EventTime": _utc(event["EventTime"])}))

    def throttle_next(self, n: int) -> None:
        """The next ``n`` requests get 400 ThrottlingException (LookupEvents allows 2 req/s)."""
        self._queue(n, 400, "ThrottlingException", "Rate exceeded")

    def fail_next(self, n: int, status: int = 500, code: str = "InternalFailure",
                  message: str = "An internal error occurred") -> None:
        self._queue(n, status, code, message)

    def deny_next(self, n: int = 1, principal: str = DEFAULT_ACTOR) -> None:
        self._queue(n, 400, "AccessDeniedException",
                    f"User: {principal} is not authorized to perform: cloudtrail:LookupEvents "
                    "because no identity-based policy allows the cloudtrail:LookupEvents action")

    def repeat_next_token(self, enabled: bool = True) -> None:
        """Simulate a paging bug: every page after the first carries the same NextToken."""
        with self._lock:
            self._repeat_tokens = enabled

    def _queue(self, n: int, status: int, code: str, message: str) -> None:
        with self._lock:
            self._faults.extend([(status, code, message)] * n)

    def reset(self) -> None:
        """Forget events, tokens, pending faults and the request log."""
        with self._lock:
            self._events.clear()
            self._tokens.clear()
            self._faults.clear()
            self._repeat_tokens = False
            self.requests.clear()

    def lookup_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["target"] == LOOKUP_TARGET]

    # --- server -------------------------------------------------------------------------------
    def start(self) -> "CloudTrailEmulator":
        emulator = self

        class Handler(JsonHandler):
            content_type = CONTENT_TYPE

            def do_POST(self):  # noqa: N802 - http.server naming
                status, payload = emulator._handle(self.headers, self.read_body())
                self.send_json(status, payload, {"x-amzn-RequestId": str(uuid.uuid4())})

        return self._serve(Handler, name="cloudtrail-emulator")

    def _handle(self, headers, raw: bytes) -> tuple[int, dict[str, Any]]:
        target = headers.get("X-Amz-Target")
        entry: dict[str, Any] = {"target": target, "body": None, "region": None, "status": 200,
                                 "error": None}
        with self._lock:
            self.requests.append(entry)
        try:
            entry["region"] = self._authenticate(headers)
            if (headers.get("Content-Type") or "").split(";")[0].strip() != CONTENT_TYPE:
                raise _ApiError("UnknownOperationException",
                                "expected content type " + CONTENT_TYPE)
            try:
                entry["body"] = body = json.loads(raw or b"{}")
            except ValueError:
                raise _ApiError("SerializationException", "request body is not JSON") from None
            if target != LOOKUP_TARGET:
                raise _ApiError("UnknownOperationException", f"unknown operation {target!r}")
            with self._lock:
                fault = self._faults.pop(0) if self._faults else None
            if fault:
                raise _ApiError(fault[1], fault[2], fault[0])
            return 200, self._lookup(body, entry["region"])
        except _ApiError as err:
            entry["status"], entry["error"] = err.status, err.code
            return err.status, {"__type": err.code, "message": err.message}

    @staticmethod
    def _authenticate(headers) -> str:
        auth = headers.get("Authorization")
        if not auth:
            raise _ApiError("MissingAuthenticationTokenException",
                            "Request is missing Authentication Token")
        match = _SIGV4.match(auth)
        if not match or not headers.get("X-Amz-Date"):
            raise _ApiError("IncompleteSignatureException",
                            "Authorization header requires a SigV4 credential scope, "
                            "SignedHeaders, Signature and an X-Amz-Date header")
        if match.group(4) != "cloudtrail":
            raise _ApiError("InvalidSignatureException",
                            f"credential scope names service {match.group(4)!r}, not 'cloudtrail'")
        return match.group(3)

    def _lookup(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        attributes = body.get("LookupAttributes") or []
        if not isinstance(attributes, list) or len(attributes) > 1:
            raise _ApiError("InvalidLookupAttributesException",
                            "You can specify only one lookup attribute per request.")
        attribute = attributes[0] if attributes else None
        if attribute is not None and (attribute.get("AttributeKey") not in ATTRIBUTE_KEYS
                                      or not isinstance(attribute.get("AttributeValue"), str)):
            raise _ApiError("InvalidLookupAttributesException",
                            f"Invalid lookup attribute {attribute!r}")
        max_results = body.get("MaxResults", 50)
        if isinstance(max_results, bool) or not isinstance(max_results, int) or \
                not 1 <= max_results <= 50:
            raise _ApiError("InvalidMaxResultsException",
                            "MaxResults must be an integer between 1 and 50")
        start, end = self._time(body, "StartTime"), self._time(body, "EndTime")
        if start is not None and end is not None and start > end:
            raise _ApiError("InvalidTimeRangeException", "StartTime must not be after EndTime")
        # A token is valid only with the parameters that produced it (as on AWS).
        query = json.dumps([attribute, body.get("StartTime"), body.get("EndTime"), max_results,
                            body.get("EventCategory"), region], sort_keys=True)
        offset = 0
        token = body.get("NextToken")
        with self._lock:
            if token is not None:
                known = self._tokens.get(token)
                if known is None or known[0] != query:
                    raise _ApiError("InvalidNextTokenException", "Invalid NextToken")
                offset = known[1]
            matches = [e for r, e in self._events if r == region
                       and self._matches(e, attribute)
                       and (start is None or e["EventTime"] >= start)
                       and (end is None or e["EventTime"] <= end)]
            matches.sort(key=lambda e: (e["EventTime"], e["EventId"]), reverse=True)
            page = matches[offset:offset + max_results]
            result: dict[str, Any] = {"Events": [self._wire(e) for e in page]}
            if offset + max_results < len(matches):
                if self._repeat_tokens:
                    next_token = "repeated-token"
                    self._tokens[next_token] = (query, max_results)
                else:
                    next_token = secrets.token_urlsafe(32)
                    self._tokens[next_token] = (query, offset + max_results)
                result["NextToken"] = next_token
        return result

    @staticmethod
    def _time(body: dict[str, Any], key: str) -> dt.datetime | None:
        value = body.get(key)
        if value is None:
            return None
        # JSON 1.1 sends timestamps as epoch seconds
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _ApiError("SerializationException", f"{key} must be epoch seconds")
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)

    @staticmethod
    def _matches(event: dict[str, Any], attribute: dict[str, str] | None) -> bool:
        if attribute is None:
            return True
        key, value = attribute["AttributeKey"], attribute["AttributeValue"]
        if key in ("ResourceType", "ResourceName"):
            return any(r.get(key) == value for r in event.get("Resources") or [])
        return str(event.get(key)) == value

    @staticmethod
    def _wire(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "EventTime": event["EventTime"].timestamp()}
