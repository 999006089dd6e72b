"""The local S3 store of `s3_server` and `s3_settings` (SeaweedFS) acts as S3 where we need it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from devservers.seaweed import LocalS3

MiB = 1024 * 1024


def client_from(settings: dict[str, str]) -> Any:
    """An S3 client made from the app's settings alone, as the app makes one."""
    return boto3.client(
        "s3",
        endpoint_url=settings["S3_ENDPOINT_URL"],
        aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
        region_name=settings["AWS_DEFAULT_REGION"],
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def test_settings_name_a_fresh_bucket_of_the_server(
    s3_server: LocalS3, s3_settings: dict[str, str]
) -> None:
    assert s3_settings == {
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": s3_settings["S3_BUCKET"],
        "S3_PREFIX": "",
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert s3_settings["S3_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    listed = client_from(s3_settings).list_objects_v2(Bucket=s3_settings["S3_BUCKET"])
    assert listed["KeyCount"] == 0


def test_bytes_put_are_the_bytes_got(s3_settings: dict[str, str]) -> None:
    client, bucket = client_from(s3_settings), s3_settings["S3_BUCKET"]
    body = os.urandom(100_000)
    client.put_object(
        Bucket=bucket, Key="originals/7/photo.jpg", Body=body, ContentType="image/jpeg"
    )

    got = client.get_object(Bucket=bucket, Key="originals/7/photo.jpg")
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/jpeg"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="originals/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [
        ("originals/7/photo.jpg", 100_000)
    ]


def test_a_20_mib_file_goes_up_in_5_mib_parts(s3_settings: dict[str, str], tmp_path: Path) -> None:
    client, bucket = client_from(s3_settings), s3_settings["S3_BUCKET"]
    source = tmp_path / "delivery.png"
    source.write_bytes(os.urandom(20 * MiB))
    parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)

    client.upload_file(str(source), bucket, "deliveries/job/delivery.png", Config=parts)

    head = client.head_object(Bucket=bucket, Key="deliveries/job/delivery.png")
    assert head["ContentLength"] == 20 * MiB
    assert head["ETag"].strip('"').endswith("-4")  # S3's mark of a 4-part upload
    target = tmp_path / "downloaded.png"
    client.download_file(bucket, "deliveries/job/delivery.png", str(target))
    assert target.read_bytes() == source.read_bytes()


def test_a_presigned_url_serves_the_object_and_a_range_of_it(s3_settings: dict[str, str]) -> None:
    client, bucket = client_from(s3_settings), s3_settings["S3_BUCKET"]
    body = bytes(range(100))
    client.put_object(Bucket=bucket, Key="deliveries/j/out.png", Body=body)
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "deliveries/j/out.png"}, ExpiresIn=300
    )
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url

    whole = requests.get(url, timeout=10)
    part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    forged = requests.get(url.replace("out.png", "out.jpg"), timeout=10)

    assert (whole.status_code, whole.content) == (200, body)
    assert (part.status_code, part.content) == (206, body[10:20])
    assert part.headers["Content-Range"] == "bytes 10-19/100"
    assert forged.status_code == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in forged.text


def test_wrong_or_missing_credentials_are_refused(
    s3_server: LocalS3, s3_settings: dict[str, str]
) -> None:
    bucket = s3_settings["S3_BUCKET"]
    client_from(s3_settings).put_object(Bucket=bucket, Key="kept", Body=b"kept")
    wrong_secret = s3_server.client(secret_key="not-the-secret")
    unknown_key = s3_server.client(access_key="AKNOTAKEYOFTHISSTORE")

    with pytest.raises(ClientError) as read:
        wrong_secret.get_object(Bucket=bucket, Key="kept")
    with pytest.raises(ClientError) as write:
        wrong_secret.put_object(Bucket=bucket, Key="written", Body=b"no")
    with pytest.raises(ClientError) as listing:
        unknown_key.list_objects_v2(Bucket=bucket)
    anonymous = requests.get(f"{s3_server.endpoint_url}/{bucket}/kept", timeout=10)

    assert error_code(read) == error_code(write) == "SignatureDoesNotMatch"
    assert error_code(listing) == "InvalidAccessKeyId"
    assert anonymous.status_code == 403
    assert "<Code>AccessDenied</Code>" in anonymous.text
    keys = client_from(s3_settings).list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in keys] == ["kept"]


def test_a_missing_bucket_is_no_such_bucket(s3_settings: dict[str, str]) -> None:
    client = client_from(s3_settings)
    missing = s3_settings["S3_BUCKET"] + "-missing"

    with pytest.raises(ClientError) as read:
        client.get_object(Bucket=missing, Key="k")
    with pytest.raises(ClientError) as write:
        client.put_object(Bucket=missing, Key="k", Body=b"x")

    assert error_code(read) == error_code(write) == "NoSuchBucket"
    # Not created by the upload (SeaweedFS would, for admin keys, without -s3.autoCreateBucket).
    assert missing not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_an_unfinished_multipart_upload_is_listed_until_aborted(
    s3_settings: dict[str, str],
) -> None:
    client, bucket = client_from(s3_settings), s3_settings["S3_BUCKET"]
    upload = client.create_multipart_upload(Bucket=bucket, Key="deliveries/j/big.png")
    upload_id = upload["UploadId"]
    client.upload_part(
        Bucket=bucket, Key="deliveries/j/big.png", UploadId=upload_id, PartNumber=1, Body=b"p" * MiB
    )

    listed = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("deliveries/j/big.png", upload_id)]
    parts = client.list_parts(Bucket=bucket, Key="deliveries/j/big.png", UploadId=upload_id)
    assert [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, MiB)]

    client.abort_multipart_upload(Bucket=bucket, Key="deliveries/j/big.png", UploadId=upload_id)

    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as gone:
        client.list_parts(Bucket=bucket, Key="deliveries/j/big.png", UploadId=upload_id)
    assert error_code(gone) == "NoSuchUpload"
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
