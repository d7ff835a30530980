"""Small files on any Hadoop path (``file:``, ``hdfs:``, ``s3a:``, ``abfss:``, or a plain path on the
default filesystem), through the driver JVM's Hadoop ``FileSystem`` and the session's Hadoop settings:
the same credentials and filesystems that Spark uses for the tables.

Driver side only: Python workers have no JVM; executors receive files through ``SparkContext.addFile``.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from pyspark.sql import SparkSession


@contextmanager
def _filesystem(spark: SparkSession, uri: str) -> Iterator[tuple[Any, Any]]:
    """A private ``FileSystem`` instance for ``uri`` (closed afterwards) and the Hadoop ``Path``.

    Private, so that switching off checksum files here does not change the cached instance Spark
    writes through; without the switch the local filesystem leaves a ``.crc`` file beside each file.
    """
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    fs = jvm.org.apache.hadoop.fs.FileSystem.newInstance(path.toUri(), conf)
    try:
        if fs.getClass().getName().endswith("LocalFileSystem"):
            fs.setWriteChecksum(False)
            fs.setVerifyChecksum(False)
        yield fs, path
    finally:
        fs.close()


def qualified(spark: SparkSession, uri: str) -> str:
    """``uri`` with its filesystem's scheme and authority: a plain path resolves on the default filesystem."""
    with _filesystem(spark, uri) as (fs, path):
        return str(fs.makeQualified(path).toString())


def exists(spark: SparkSession, uri: str) -> bool:
    """Whether a file or folder exists at ``uri``."""
    with _filesystem(spark, uri) as (fs, path):
        return bool(fs.exists(path))


def is_file(spark: SparkSession, uri: str) -> bool:
    """Whether ``uri`` is an existing file (not a folder)."""
    with _filesystem(spark, uri) as (fs, path):
        return bool(fs.exists(path) and fs.getFileStatus(path).isFile())


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    """A whole (small) file's bytes.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``uri``.
    """
    with _filesystem(spark, uri) as (fs, path):
        if not fs.exists(path):
            raise FileNotFoundError(uri)
        stream = fs.open(path)
        try:
            return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()


def write_bytes_atomically(spark: SparkSession, uri: str, content: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a part.

    The bytes go to a hidden sibling first, which is then renamed over ``uri``: atomic on local
    filesystems, HDFS and ABFS. Where a rename does not replace an existing file (HDFS), the old
    file is deleted first, so a reader may briefly find none. On S3 a single PUT is atomic anyway.
    """
    with _filesystem(spark, uri) as (fs, path):
        tmp = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path.getParent(), f".{path.getName()}.{uuid.uuid4().hex}")
        stream = fs.create(tmp, True)
        try:
            stream.write(bytearray(content))
        finally:
            stream.close()
        if not fs.rename(tmp, path):
            fs.delete(path, False)
            if not fs.rename(tmp, path):
                fs.delete(tmp, False)
                raise OSError(f"could not move {tmp.toString()} to {uri}")


def upload_folder(spark: SparkSession, local_folder: str, uri: str) -> None:
    """Copy a local folder (and everything in it) to ``uri``, which must not exist yet."""
    with _filesystem(spark, uri) as (fs, path):
        if fs.exists(path):
            raise FileExistsError(uri)
        source = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(f"file:{local_folder}")
        fs.copyFromLocalFile(False, False, source, path)


def rename(spark: SparkSession, source: str, target: str) -> None:
    """Rename ``source`` to ``target`` (same filesystem); atomic for folders on local filesystems and HDFS.

    Raises
    ------
    FileExistsError
        If ``target`` exists.
    OSError
        If the filesystem refused the rename.
    """
    with _filesystem(spark, target) as (fs, path):
        if fs.exists(path):
            raise FileExistsError(target)
        if not fs.rename(spark.sparkContext._jvm.org.apache.hadoop.fs.Path(source), path):
            raise OSError(f"could not rename {source} to {target}")


def make_folders(spark: SparkSession, uri: str) -> None:
    """Create a folder and its parents (nothing happens if it exists)."""
    with _filesystem(spark, uri) as (fs, path):
        fs.mkdirs(path)


def delete(spark: SparkSession, uri: str) -> None:
    """Delete a file or a folder with everything in it (nothing happens if it does not exist)."""
    with _filesystem(spark, uri) as (fs, path):
        fs.delete(path, True)


def list_names(spark: SparkSession, uri: str) -> list[str]:
    """Names of the entries of folder ``uri``, sorted (empty if it does not exist)."""
    with _filesystem(spark, uri) as (fs, path):
        if not fs.exists(path):
            return []
        return sorted(status.getPath().getName() for status in fs.listStatus(path))
