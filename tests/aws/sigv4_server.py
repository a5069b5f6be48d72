"""A small S3 and STS endpoint for tests/aws_body.rs that verifies every SigV4 signature with
the REAL key, computing the expected signature independently of netcage with botocore's signer.

Usage: sigv4_server.py CERT KEY LOG  (real key in NC_REAL_ID / NC_REAL_SECRET). Listens on
127.0.0.1 port 0 and prints the port. Every request is appended to LOG as one JSON line: method,
path, host, what it carried (the stand-in key id, any starpod token, the real secret), whether
its signature verified, and the S3/STS operation.

S3 (path-style): ListBuckets, ListObjectsV2, PutObject, GetObject, CreateMultipartUpload,
UploadPart, CompleteMultipartUpload, AbortMultipartUpload; bodies in aws-chunked encoding
(STREAMING-UNSIGNED-PAYLOAD-TRAILER) are decoded. STS: GetCallerIdentity. A request whose
signature does not verify gets S3's 403 SignatureDoesNotMatch and changes nothing; a plain
(not aws-chunked) PUT without Content-Length gets S3's 501 NotImplemented.
"""

import hashlib
import hmac
import json
import os
import ssl
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REAL_ID = os.environ["NC_REAL_ID"]
REAL_SECRET = os.environ["NC_REAL_SECRET"]
CERT, KEY, LOG = sys.argv[1:4]
LOCK = threading.Lock()
BUCKET = "netcage-test"
OBJECTS = {}  # key -> bytes
UPLOADS = {}  # upload id -> {part number: bytes}


def log(entry):
    with LOCK, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def verify_signed_chunks(body, seed, amz_date, scope):
    """The data of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body whose every chunk signature,
    chained from the seed, is the real key's; None if one is not."""
    date, region, service = scope
    key = ("AWS4" + REAL_SECRET).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    previous, rest, out = seed, body, bytearray()
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size_hex, _, ext = line.partition(b";")
        got = ext.partition(b"chunk-signature=")[2].decode()
        size = int(size_hex, 16)
        data, rest = rest[:size], rest[size + 2 :]
        string_to_sign = "\n".join(
            ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, f"{date}/{region}/{service}/aws4_request",
             previous, EMPTY_SHA256, hashlib.sha256(data).hexdigest()]
        )
        want = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, got):
            return None
        previous = got
        out += data
        if size == 0:
            return bytes(out)


def parse_auth(value):
    algorithm, _, rest = value.partition(" ")
    fields = {}
    for part in rest.split(","):
        k, _, v = part.strip().partition("=")
        fields[k] = v
    return algorithm, fields


def expected_signature(method, host, raw_path, query, headers, body, presigned):
    """The signature botocore computes over the request as received, with the real key."""
    cred = Credentials(REAL_ID, REAL_SECRET)
    q = dict(parse_qsl(query, keep_blank_values=True))
    if presigned:
        credential = q["X-Amz-Credential"]
        signed = q.get("X-Amz-SignedHeaders", "host").split(";")
        amz_date = q["X-Amz-Date"]
        query = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
    else:
        _, fields = parse_auth(headers.get("authorization", ""))
        credential = fields["Credential"]
        signed = fields["SignedHeaders"].split(";")
        amz_date = headers.get("x-amz-date", "")
    key_id, date, region, service, _ = credential.split("/")
    if key_id != REAL_ID:
        return None, f"credential key id {key_id!r} is not the real one"
    if not amz_date.startswith(date):
        return None, "X-Amz-Date does not match the scope"
    url = f"https://{host}{raw_path}" + (f"?{query}" if query else "")
    picked = [(n, headers.get_all(n)) for n in signed]
    req = AWSRequest(method=method, url=url, data=body)
    for name in list(req.headers.keys()):
        del req.headers[name]
    for name, values in picked:
        for v in values:
            req.headers[name] = v
    req.context["timestamp"] = amz_date
    signer_class = S3SigV4Auth if service == "s3" else SigV4Auth
    signer = signer_class(cred, service, region)
    if presigned:
        # S3 presigned URLs sign UNSIGNED-PAYLOAD (botocore's S3SigV4QueryAuth.payload).
        signer.payload = lambda request: "UNSIGNED-PAYLOAD"
    cr = signer.canonical_request(req)
    sts = signer.string_to_sign(req, cr)
    return signer.signature(sts, req), None


class Headers:
    def __init__(self, message):
        self.pairs = [(k.lower(), v) for k, v in message.items()]

    def get(self, name, default=None):
        for k, v in self.pairs:
            if k == name:
                return v
        return default

    def get_all(self, name):
        return [v for k, v in self.pairs if k == name]


def decode_aws_chunked(data):
    out = bytearray()
    trailers = {}
    rest = data
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            for t in rest.split(b"\r\n"):
                if b":" in t:
                    k, _, v = t.partition(b":")
                    trailers[k.decode().strip().lower()] = v.decode().strip()
            return bytes(out), trailers
        out += rest[:size]
        rest = rest[size + 2 :]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out), True
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(n), False

    def reply(self, status, body=b"", content_type="application/xml", extra=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        body, chunked = self.read_body()
        split = urlsplit(self.path)
        raw_path, query = split.path, split.query
        headers = Headers(self.headers)
        host = headers.get("host", "")
        everything = (
            self.requestline.encode()
            + b"\n"
            + "\n".join(f"{k}: {v}" for k, v in headers.pairs).encode()
            + b"\n"
            + body
        )
        entry = {
            "method": self.command,
            "path": raw_path,
            "query": query,
            "host": host,
            "chunked": chunked,
            "content_sha256": headers.get("x-amz-content-sha256"),
            "standin": b"AKIANETC" in everything or b"ASIANETC" in everything,
            "token": b"starpod:" in everything,
            "real_secret": REAL_SECRET.encode() in everything,
            "security_token": headers.get("x-amz-security-token")
            or dict(parse_qsl(query)).get("X-Amz-Security-Token"),
        }
        if (self.command == "PUT" and chunked
                and "aws-chunked" not in headers.get("content-encoding", "")):
            # As S3 does: a plain upload needs its Content-Length.
            entry["op"], entry["verified"] = "NotImplemented", None
            log(entry)
            return self.reply(
                501, b"<Error><Code>NotImplemented</Code><Message>Transfer-Encoding</Message></Error>")
        presigned = "X-Amz-Signature=" in query
        auth = headers.get("authorization", "")
        if presigned:
            got = dict(parse_qsl(query)).get("X-Amz-Signature")
        elif auth.startswith("AWS4-HMAC-SHA256 "):
            got = parse_auth(auth)[1].get("Signature")
        else:
            got = None
        try:
            want, why = expected_signature(
                self.command, host, raw_path, query, headers, body, presigned
            ) if got else (None, "no SigV4 signature")
        except Exception as e:  # a malformed request is a failed verification
            want, why = None, f"cannot verify: {e!r}"
        declared = headers.get("x-amz-content-sha256")
        payload = body
        if declared == "STREAMING-UNSIGNED-PAYLOAD-TRAILER" or "aws-chunked" in headers.get(
            "content-encoding", ""
        ):
            payload, trailers = decode_aws_chunked(body)
            entry["trailers"] = sorted(trailers)
        if declared == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" and want and got and want == got:
            cred = parse_auth(auth)[1]["Credential"].split("/")
            payload = verify_signed_chunks(body, got, headers.get("x-amz-date"), cred[1:4])
            entry["signed_chunks"] = payload is not None
            if payload is None:
                want, why = None, "a chunk signature is not the real key's"
        if declared and len(declared) == 64 and hashlib.sha256(body).hexdigest() != declared:
            want, why = None, "x-amz-content-sha256 does not match the body"
        entry["verified"] = bool(want) and hmac.compare_digest(want, got or "")
        entry["why"] = why if not entry["verified"] else None
        entry["op"] = None
        if not entry["verified"]:
            log(entry)
            return self.reply(
                403,
                b"<Error><Code>SignatureDoesNotMatch</Code><Message>%s</Message></Error>"
                % (why or "signature mismatch").encode(),
            )
        self.dispatch(entry, raw_path, dict(parse_qsl(query, keep_blank_values=True)), payload)

    def dispatch(self, entry, path, q, payload):
        host = entry["host"].split(":")[0]
        m = self.command
        parts = path.lstrip("/").split("/", 1)
        bucket = parts[0]
        key = parts[1] if len(parts) > 1 else ""
        if host.startswith("sts."):
            entry["op"] = "GetCallerIdentity"
            log(entry)
            return self.reply(
                200,
                b"<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult>"
                b"<Arn>arn:aws:iam::123456789012:user/netcage-test</Arn><UserId>AIDANETCAGETEST</UserId>"
                b"<Account>123456789012</Account></GetCallerIdentityResult>"
                b"<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
                "text/xml",
            )
        etag = lambda data: '"%s"' % hashlib.md5(data).hexdigest()
        with LOCK:
            if m == "GET" and not bucket:
                entry["op"] = "ListBuckets"
                body = (
                    b"<ListAllMyBucketsResult><Owner><ID>1</ID></Owner><Buckets><Bucket><Name>%s</Name>"
                    b"<CreationDate>2026-01-01T00:00:00.000Z</CreationDate></Bucket></Buckets></ListAllMyBucketsResult>"
                    % BUCKET.encode()
                )
                status, extra = 200, {}
            elif m == "GET" and not key:
                entry["op"] = "ListObjectsV2"
                items = b"".join(
                    b"<Contents><Key>%s</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                    b"<ETag>%s</ETag><Size>%d</Size><StorageClass>STANDARD</StorageClass></Contents>"
                    % (k.encode(), etag(v).encode(), len(v))
                    for k, v in sorted(OBJECTS.items())
                    if k.startswith(q.get("prefix", ""))
                )
                body = (
                    b"<ListBucketResult><Name>%s</Name><Prefix>%s</Prefix><KeyCount>%d</KeyCount>"
                    b"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>%s</ListBucketResult>"
                    % (bucket.encode(), q.get("prefix", "").encode(), len(OBJECTS), items)
                )
                status, extra = 200, {}
            elif m == "POST" and "uploads" in q:
                entry["op"] = "CreateMultipartUpload"
                upload = uuid.uuid4().hex
                UPLOADS[upload] = {}
                body = (
                    b"<InitiateMultipartUploadResult><Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId>"
                    b"</InitiateMultipartUploadResult>" % (bucket.encode(), key.encode(), upload.encode())
                )
                status, extra = 200, {}
            elif m == "PUT" and "uploadId" in q:
                entry["op"] = "UploadPart"
                UPLOADS[q["uploadId"]][int(q["partNumber"])] = payload
                entry["size"] = len(payload)
                body, status, extra = b"", 200, {"ETag": etag(payload)}
            elif m == "POST" and "uploadId" in q:
                entry["op"] = "CompleteMultipartUpload"
                upload = UPLOADS.pop(q["uploadId"])
                data = b"".join(upload[n] for n in sorted(upload))
                OBJECTS[key] = data
                entry["size"] = len(data)
                entry["sha256"] = hashlib.sha256(data).hexdigest()
                body = (
                    b"<CompleteMultipartUploadResult><Bucket>%s</Bucket><Key>%s</Key><ETag>%s</ETag>"
                    b"</CompleteMultipartUploadResult>" % (bucket.encode(), key.encode(), etag(data).encode())
                )
                status, extra = 200, {}
            elif m == "DELETE" and "uploadId" in q:
                entry["op"] = "AbortMultipartUpload"
                UPLOADS.pop(q["uploadId"], None)
                body, status, extra = b"", 204, {}
            elif m == "PUT":
                entry["op"] = "PutObject"
                OBJECTS[key] = payload
                entry["size"] = len(payload)
                entry["sha256"] = hashlib.sha256(payload).hexdigest()
                body, status, extra = b"", 200, {"ETag": etag(payload)}
            elif m in ("GET", "HEAD") and key in OBJECTS:
                entry["op"] = "GetObject" if m == "GET" else "HeadObject"
                body, status, extra = OBJECTS[key], 200, {"ETag": etag(OBJECTS[key])}
            else:
                entry["op"] = "NoSuchKey"
                body, status, extra = b"<Error><Code>NoSuchKey</Code></Error>", 404, {}
        log(entry)
        self.reply(status, body, extra=extra)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
