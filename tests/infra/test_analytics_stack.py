"""infra/analytics.yaml: Glue tables over the flow's Parquet outputs and the analysts' Athena
workgroup.

The stack is deployed to the session's moto server after the storage stack (`aws_stacks`).
moto's CloudFormation models its results bucket but not AWS::Glue::Database, AWS::Glue::Table
or AWS::Athena::WorkGroup (it skips them with a warning), so those are created through moto's
Glue and Athena APIs from the template's own properties, its intrinsic functions evaluated
against the deployed stacks (`Resolver`): what is checked is what the template says. Parquet is
written to the outputs bucket by the pipeline's own writers (`ShardWriter`, `write_drift_row`),
and the tables are compared with the schemas read back from those files. The README's Athena
queries run in DuckDB on views named like the tables, over the same files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from infra_helpers import ACCOUNT, REGION, Stacks, deploy, load_template

from tasks.batch.drift import DRIFT_SCHEMA, label_drift, write_drift_row
from tasks.batch.sink import SCHEMAS, ShardWriter, prob_columns

# moto warns once per resource type it does not model
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

README = Path(__file__).resolve().parents[2] / "README.md"
TEMPLATE = "analytics.yaml"
TABLE_SCHEMAS: dict[str, pa.Schema] = {**SCHEMAS, "drift": DRIFT_SCHEMA}
"""Every table the flow writes under its output, and the schema of its files."""
MOTO_UNMODELLED = {"AWS::Glue::Database", "AWS::Glue::Table", "AWS::Athena::WorkGroup",
                   "AWS::S3::BucketPolicy"}

# --- Arrow -> Glue (Hive) types ------------------------------------------------------------------
_GLUE_TYPES: dict[pa.DataType, str] = {
    pa.string(): "string",
    pa.int32(): "int",
    pa.int64(): "bigint",
    pa.float32(): "float",
    pa.float64(): "double",
    pa.bool_(): "boolean",
    pa.timestamp("us", tz="UTC"): "timestamp",
}
# How Athena's Parquet reader expects each Glue type stored: (physical type, logical type).
_PARQUET_TYPES: dict[str, tuple[str, str]] = {
    "string": ("BYTE_ARRAY", "STRING"),
    "int": ("INT32", "NONE"),
    "bigint": ("INT64", "NONE"),
    "float": ("FLOAT", "NONE"),
    "double": ("DOUBLE", "NONE"),
    "boolean": ("BOOLEAN", "NONE"),
    "timestamp": ("INT64", "TIMESTAMP"),
}


def glue_type(arrow: pa.DataType) -> str:
    """The Glue column type of an Arrow type the pipeline writes (KeyError for any other)."""
    if pa.types.is_dictionary(arrow):
        return glue_type(arrow.value_type)
    if pa.types.is_list(arrow):
        return f"array<{glue_type(arrow.value_type)}>"
    return _GLUE_TYPES[arrow]


def glue_columns(schema: pa.Schema) -> list[tuple[str, str]]:
    """``(name, Glue type)`` of every field of `schema`, in order."""
    return [(f.name, glue_type(f.type)) for f in schema]


# --- the template's intrinsic functions ----------------------------------------------------------
_NO_VALUE = object()  # AWS::NoValue: the key or item is dropped
_SUB = re.compile(r"\$\{(!?)([^}]+)\}")


@dataclass
class Resolver:
    """CloudFormation's intrinsic functions over template data (`load_template`), for those the
    analytics template uses: Ref, Fn::Sub, Fn::ImportValue, Fn::GetAtt (a bucket's Arn), Fn::If
    and the condition functions; anything else raises."""

    refs: dict[str, Any]
    attributes: dict[str, str]
    """``"Logical.Attribute"`` -> value."""
    exports: dict[str, str]
    conditions: dict[str, bool]

    @classmethod
    def for_stack(cls, stacks: Stacks, stack_name: str, template: dict[str, Any],
                  params: dict[str, str]) -> Resolver:
        """Parameters (given, else default; Number as int), pseudo parameters, the physical ids
        of the stack's created resources and the region's exports, as CloudFormation has them."""
        cfn = stacks.client("cloudformation")
        refs: dict[str, Any] = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION,
                                "AWS::Partition": "aws", "AWS::StackName": stack_name,
                                "AWS::NoValue": _NO_VALUE}
        for name, spec in template["Parameters"].items():
            value = params.get(name, spec.get("Default"))
            refs[name] = int(value) if spec["Type"] == "Number" else value
        attributes: dict[str, str] = {}
        for r in cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]:
            logical, physical = r["LogicalResourceId"], r["PhysicalResourceId"]
            refs[logical] = physical
            if r["ResourceType"] == "AWS::S3::Bucket":
                attributes[f"{logical}.Arn"] = f"arn:aws:s3:::{physical}"
        exports = {e["Name"]: e.get("Value", "") for e in cfn.list_exports()["Exports"]}
        resolver = cls(refs, attributes, exports, {})
        resolver.conditions = {k: bool(resolver(v))
                               for k, v in template.get("Conditions", {}).items()}
        return resolver

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in map(self, node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            functions: dict[str, Callable[[Any], Any]] = {
                "Ref": lambda a: self.refs[a],
                "Fn::Sub": self._sub,
                "Fn::ImportValue": lambda a: self.exports[self(a)],
                "Fn::GetAtt": lambda a: self.attributes[a if isinstance(a, str) else ".".join(a)],
                "Fn::If": lambda a: self(a[1] if self.conditions[a[0]] else a[2]),
                "Fn::Equals": lambda a: self(a[0]) == self(a[1]),
                "Fn::Not": lambda a: not self(a[0]),
            }
            if key in functions:
                return functions[key](arg)
            if key.startswith("Fn::"):
                raise NotImplementedError(key)
        resolved = {k: self(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def _sub(self, arg: str | list[Any]) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self(arg[1]))

        def one(m: re.Match[str]) -> str:
            if m.group(1):  # ${!name}: a literal ${name}
                return "${" + m.group(2) + "}"
            name = m.group(2)
            if name in variables:
                return str(variables[name])
            return str(self.attributes[name] if "." in name else self.refs[name])

        return _SUB.sub(one, text)


# --- fixtures ------------------------------------------------------------------------------------
@dataclass
class Analytics:
    """The deployed analytics stack: its parameters, outputs, resolved resources and catalogue."""

    stacks: Stacks
    name: str
    params: dict[str, str]
    outputs: dict[str, str]
    resources: dict[str, dict[str, Any]]
    """Logical id -> {"Type", "Properties"} with every intrinsic function evaluated."""
    outputs_bucket: str
    outputs_prefix: str

    @property
    def output(self) -> str:
        """The flow's ``output`` parameter that these tables read."""
        return f"s3://{self.outputs_bucket}/{self.outputs_prefix}".rstrip("/")

    def glue_table(self, table: str) -> dict[str, Any]:
        return self.stacks.client("glue").get_table(
            DatabaseName=self.params["DatabaseName"], Name=table)["Table"]


def _create_unmodelled(stacks: Stacks, resolver: Resolver, template: dict[str, Any]
                       ) -> dict[str, dict[str, Any]]:
    """Create the Glue database, its tables and the workgroup through moto's APIs from the
    template's properties (database first: the tables' ``!Ref Database`` is its name)."""
    glue, athena = stacks.client("glue"), stacks.client("athena")
    order = {"AWS::Glue::Database": 0, "AWS::Glue::Table": 1, "AWS::Athena::WorkGroup": 2}
    resolved: dict[str, dict[str, Any]] = {}
    for logical, resource in sorted(template["Resources"].items(),
                                    key=lambda kv: order.get(kv[1]["Type"], -1)):
        props = resolver(resource["Properties"])
        resolved[logical] = {"Type": resource["Type"], "Properties": props}
        if resource["Type"] == "AWS::Glue::Database":
            glue.create_database(CatalogId=props["CatalogId"], DatabaseInput=props["DatabaseInput"])
            resolver.refs[logical] = props["DatabaseInput"]["Name"]
        elif resource["Type"] == "AWS::Glue::Table":
            glue.create_table(CatalogId=props["CatalogId"], DatabaseName=props["DatabaseName"],
                              TableInput=props["TableInput"])
        elif resource["Type"] == "AWS::Athena::WorkGroup":
            athena.create_work_group(Name=props["Name"], Description=props["Description"],
                                     Configuration=props["WorkGroupConfiguration"])
            resolver.refs[logical] = props["Name"]
    return resolved


@pytest.fixture(scope="module")
def analytics(aws_stacks: Stacks) -> Analytics:
    """analytics.yaml deployed after the session's storage stack, with the IAM stack's
    outputs prefix; Glue and Athena resources created from its properties."""
    prefix = aws_stacks.prefix
    outputs_prefix = load_template("iam.yaml")["Parameters"]["OutputsPrefix"]["Default"]
    params = {"StorageStack": aws_stacks.name("storage"), "NamePrefix": prefix,
              "OutputsPrefix": outputs_prefix, "DatabaseName": f"{prefix}_emotion",
              "WorkGroupName": f"{prefix}-analysts", "BytesScannedCutoffPerQuery": "2000000000",
              "ResultsExpirationDays": "9"}
    name = aws_stacks.name("analytics")
    outputs = deploy(aws_stacks.client("cloudformation"), name, TEMPLATE, params)
    template = load_template(TEMPLATE)
    resolver = Resolver.for_stack(aws_stacks, name, template, params)
    resources = _create_unmodelled(aws_stacks, resolver, template)
    return Analytics(aws_stacks, name, params, outputs, resources,
                     aws_stacks.outputs["storage"]["OutputsBucketName"], outputs_prefix)


NIGHT, EARLIER = "2026-12-01", "2026-11-30"  # the dates the README's queries name
RUN_FACES, RUN_FRAMES = "20261201T020000Z-bbbbbbbb", "20261130T020000Z-aaaaaaaa"


def _video(uri: str, *, decoded: bool = True) -> dict[str, Any]:
    """The video columns of a row (a failed video's have no duration)."""
    columns = {"video_uri": uri, "video_etag": f"etag-{uri[-5:]}", "video_bytes": 1000}
    return {**columns, "video_duration_s": 4.0} if decoded else columns


def _probs(label: str, confidence: float) -> dict[str, Any]:
    """A label, its confidence and six probabilities that agree with it."""
    probs = prob_columns([(1 - confidence) / 5] * 6)
    return {"label": label, "confidence": confidence, **probs, f"prob_{label}": confidence}


@dataclass
class Written:
    """What the pipeline's writers put under the output: S3 keys, and a local copy of them."""

    keys: list[str]
    local: Path
    """The output prefix mirrored: ``<local>/<table>/date=.../<file>.parquet``."""


@pytest.fixture(scope="module")
def written(analytics: Analytics, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
            ) -> Written:
    """Two nights in the outputs bucket, written with the pipeline's writers: a whole-frame
    model's run (one video, one decode error) and a face model's (two faces in a.mp4, none in
    b.mp4, one unsure face in c.mp4; three errors; its drift row)."""
    out, options = analytics.output, s3_server.storage_options
    with ShardWriter(out, RUN_FRAMES, 0, EARLIER, options, model_version="frame0000001") as w:
        w.add_prediction(**_video("s3://a/x.mp4"), clip_index=0, clip_start_s=0.0,
                         clip_end_s=4.0, **_probs("happy", 0.8))
        w.add_video(**_video("s3://a/x.mp4"), num_clips=1, **_probs("happy", 0.8))
        w.add_error(**_video("s3://a/bad.mp4", decoded=False), stage="decode",
                    error_type="CorruptVideoError", message="moov atom not found")
    with ShardWriter(out, RUN_FACES, 0, NIGHT, options, model_version="face00000001") as w:
        for face, label, confidence in ((0, "happy", 0.9), (1, "sad", 0.6)):
            box = {"face_x": 0.1 + 0.5 * face, "face_y": 0.2, "face_w": 0.3, "face_h": 0.3}
            w.add_prediction(**_video("s3://a/a.mp4"), clip_index=0, clip_start_s=0.0,
                             clip_end_s=4.0, face_id=face, **box, face_score=0.95,
                             **_probs(label, confidence))
            w.add_face(**_video("s3://a/a.mp4"), face_id=face, first_s=0.0, last_s=4.0, **box,
                       num_clips=1, **_probs(label, confidence))
        w.add_video(**_video("s3://a/a.mp4"), num_clips=2, crop="face", faces=2,
                    **_probs("happy", 0.9))
        w.add_video(**_video("s3://a/b.mp4"), num_clips=0, crop="face", faces=0)
        box = {"face_x": 0.4, "face_y": 0.4, "face_w": 0.2, "face_h": 0.2}
        w.add_prediction(**_video("s3://a/c.mp4"), clip_index=0, clip_start_s=0.0,
                         clip_end_s=4.0, face_id=0, **box, face_score=0.7,
                         **_probs("neutral", 0.35))
        w.add_face(**_video("s3://a/c.mp4"), face_id=0, first_s=0.5, last_s=3.0, **box,
                   num_clips=1, **_probs("neutral", 0.35))
        w.add_video(**_video("s3://a/c.mp4"), num_clips=1, crop="face", faces=1,
                    **_probs("neutral", 0.35))
        w.add_error(**_video("s3://a/d.mp4", decoded=False), stage="read",
                    error_type="ConnectionError", message="reset by peer")
        for uri in ("s3://a/e.mp4", "s3://a/f.mp4"):
            w.add_error(**_video(uri, decoded=False), stage="decode",
                        error_type="CorruptVideoError", message="invalid data")
    drift = label_drift(RUN_FACES, {"happy": 1, "neutral": 1},
                        [{"run_id": RUN_FRAMES, "label_distribution": {"happy": 1}}],
                        threshold=0.1)
    write_drift_row(out, drift, NIGHT, options)

    s3, local = analytics.stacks.client("s3"), tmp_path_factory.mktemp("outputs")
    listed = s3.list_objects_v2(Bucket=analytics.outputs_bucket, Prefix=analytics.outputs_prefix)
    keys = [o["Key"] for o in listed["Contents"]]
    for key in keys:
        path = local / key.removeprefix(analytics.outputs_prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(analytics.outputs_bucket, key, str(path))
    return Written(keys, local)


# --- the stack -----------------------------------------------------------------------------------
def test_moto_models_the_results_bucket_only(analytics: Analytics) -> None:
    """moto 5.2.5's CloudFormation creates the results bucket and skips the rest (the tests
    create those from the template), and gives no output that refers to a skipped resource."""
    summaries = analytics.stacks.client("cloudformation").list_stack_resources(
        StackName=analytics.name)["StackResourceSummaries"]
    created = {r["LogicalResourceId"] for r in summaries if r["PhysicalResourceId"]}
    expected = {k for k, v in analytics.resources.items() if v["Type"] not in MOTO_UNMODELLED}
    assert created == expected == {"ResultsBucket"}
    assert set(analytics.outputs) == {"ResultsBucketName", "ResultsLocation"}
    template_outputs = load_template(TEMPLATE)["Outputs"]
    assert template_outputs["DatabaseName"]["Value"] == {"Ref": "Database"}
    assert template_outputs["WorkGroupName"]["Value"] == {"Ref": "WorkGroup"}


def test_every_table_the_flow_writes_is_catalogued(analytics: Analytics) -> None:
    glue = analytics.stacks.client("glue")
    (database,) = [d for d in glue.get_databases()["DatabaseList"]
                   if d["Name"] == analytics.params["DatabaseName"]]
    assert database["LocationUri"] == f"{analytics.output}/"
    tables = glue.get_tables(DatabaseName=database["Name"])["TableList"]
    assert sorted(t["Name"] for t in tables) == sorted(TABLE_SCHEMAS)


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
def test_table_columns_are_the_parquet_schema(analytics: Analytics, written: Written,
                                              table: str) -> None:
    """Columns and types, in order: the declared schema, and the schema of the files written."""
    glue_table = analytics.glue_table(table)
    columns = [(c["Name"], c["Type"]) for c in glue_table["StorageDescriptor"]["Columns"]]
    assert columns == glue_columns(TABLE_SCHEMAS[table])
    files = sorted((written.local / table).glob("date=*/*.parquet"))
    assert files, table
    for path in files:
        assert glue_columns(pq.read_schema(path)) == columns, path
        leaves = list(pq.ParquetFile(path).schema)
        for name, glue in columns:
            (leaf,) = [c for c in leaves if c.path == name or c.path.startswith(f"{name}.")]
            element = glue.removeprefix("array<").removesuffix(">")
            stored = (leaf.physical_type, leaf.logical_type.type)
            assert stored == _PARQUET_TYPES[element], (path.name, name, stored)
            if element == "timestamp":
                assert "isAdjustedToUTC=true" in str(leaf.logical_type)
    assert "date" not in dict(columns)  # the hive folder, not a column of the files


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
def test_table_is_external_parquet_with_date_projection(analytics: Analytics, written: Written,
                                                        table: str) -> None:
    glue_table = analytics.glue_table(table)
    assert glue_table["TableType"] == "EXTERNAL_TABLE"
    assert glue_table["PartitionKeys"] == [{"Name": "date", "Type": "string"}]
    storage = glue_table["StorageDescriptor"]
    assert storage["SerdeInfo"]["SerializationLibrary"] == (
        "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")
    assert storage["InputFormat"].endswith(".MapredParquetInputFormat")
    assert storage["OutputFormat"].endswith(".MapredParquetOutputFormat")
    params = glue_table["Parameters"]
    assert params["classification"] == "parquet"
    assert {k: v for k, v in params.items() if k.startswith("projection.")} == {
        "projection.enabled": "true",
        "projection.date.type": "date",
        "projection.date.format": "yyyy-MM-dd",
        "projection.date.range": "2025-01-01,NOW",
        "projection.date.interval": "1",
        "projection.date.interval.unit": "DAYS",
    }
    # where the flow writes: <output>/<table>/date=YYYY-MM-DD/<file>.parquet
    location = f"{analytics.output}/{table}/"
    assert storage["Location"] == location
    template = params["storage.location.template"]
    assert template == f"{location}date=${{date}}/"
    keys = [k for k in written.keys if k.startswith(f"{analytics.outputs_prefix}{table}/")]
    assert keys
    for key in keys:
        date = re.search(r"/date=(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$", key)
        assert date, key
        assert f"s3://{analytics.outputs_bucket}/{key}".startswith(
            template.replace("${date}", date.group(1))), key


def test_workgroup_enforces_encrypted_expiring_results_and_a_cutoff(analytics: Analytics) -> None:
    athena, s3 = analytics.stacks.client("athena"), analytics.stacks.client("s3")
    group = athena.get_work_group(WorkGroup=analytics.params["WorkGroupName"])["WorkGroup"]
    config = group["Configuration"]
    bucket = analytics.outputs["ResultsBucketName"]
    assert bucket == f"{analytics.stacks.prefix}-athena-{ACCOUNT}-{REGION}"
    assert config["ResultConfiguration"]["OutputLocation"] == (
        analytics.outputs["ResultsLocation"]) == f"s3://{bucket}/results/"
    encryption = config["ResultConfiguration"]["EncryptionConfiguration"]
    assert encryption == {"EncryptionOption": "SSE_S3"}
    assert config["BytesScannedCutoffPerQuery"] == 2_000_000_000
    assert config["EngineVersion"]["SelectedEngineVersion"] == "Athena engine version 3"
    # moto defaults enforcement to true: the template must say it
    props = analytics.resources["WorkGroup"]["Properties"]
    assert props["WorkGroupConfiguration"]["EnforceWorkGroupConfiguration"] is True
    assert props["State"] == "ENABLED"
    # the results bucket: encrypted (moto applies it); lifecycle and TLS only in the template
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    bucket_props = analytics.resources["ResultsBucket"]["Properties"]
    rules = bucket_props["LifecycleConfiguration"]["Rules"]
    assert {"Id": "expire-query-results", "Status": "Enabled", "ExpirationInDays": 9} in rules
    assert all(bucket_props["PublicAccessBlockConfiguration"].values())
    policy = analytics.resources["ResultsTlsOnly"]["Properties"]["PolicyDocument"]
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_a_kms_key_encrypts_the_results_with_it(analytics: Analytics) -> None:
    """With the storage stack's KMS key, bucket default and workgroup results use SSE-KMS."""
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0f1e2d3c-aaaa-bbbb-cccc-000000000000"
    template = load_template(TEMPLATE)
    resolver = Resolver.for_stack(analytics.stacks, analytics.name, template,
                                  {**analytics.params, "KmsKeyArn": key})
    group = resolver(template["Resources"]["WorkGroup"]["Properties"])
    assert group["WorkGroupConfiguration"]["ResultConfiguration"]["EncryptionConfiguration"] == {
        "EncryptionOption": "SSE_KMS", "KmsKey": key}
    bucket = resolver(template["Resources"]["ResultsBucket"]["Properties"])
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule == {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                                      "KMSMasterKeyID": key},
                    "BucketKeyEnabled": True}


def test_outputs_prefix_default_is_the_iam_stacks() -> None:
    """Deployed with defaults, the tables read where the inference role may write."""
    ours = load_template(TEMPLATE)["Parameters"]
    iam = load_template("iam.yaml")["Parameters"]
    for name in ("OutputsPrefix", "StorageStack", "KmsKeyArn"):
        assert ours[name]["Default"] == iam[name]["Default"], name
        assert ours[name].get("AllowedPattern") == iam[name].get("AllowedPattern"), name


# --- the README ----------------------------------------------------------------------------------
def _athena_section() -> str:
    """README "## Analysts: reading the outputs" -> "### Athena", up to the next heading."""
    text = README.read_text()
    analysts = text[text.index("\n## Analysts: reading the outputs\n"):]
    athena = analysts[analysts.index("\n### Athena\n"):]
    end = re.search(r"\n##+ ", athena[1:])
    return athena[:end.start() + 1] if end else athena


def readme_queries() -> list[str]:
    """The ```sql blocks of the README's Athena subsection."""
    return re.findall(r"```sql\n(.*?)```", _athena_section(), flags=re.S)


def test_readme_deploys_the_stack_with_its_parameters() -> None:
    section, readme = _athena_section(), README.read_text()
    command = re.search(r"aws cloudformation deploy --stack-name emotion-analytics "
                        r"--template-file infra/analytics\.yaml[^`]*", section)
    assert command, "the deploy command"
    given = re.findall(r"\b([A-Za-z]+)=", command.group(0))
    assert given and set(given) <= set(load_template(TEMPLATE)["Parameters"])
    operators = readme[readme.index("## Operators"):readme.index("## Scaling out on Dask")]
    assert "| `emotion-analytics` | `infra/analytics.yaml` |" in operators
    assert command.group(0).strip() in operators  # the same command in the setup steps


def test_readme_queries_run_on_the_written_outputs(analytics: Analytics, written: Written
                                                   ) -> None:
    """The README's three queries, on DuckDB views named like the Glue tables over the files at
    each table's location (``date`` a string, as in Glue), give the answers the data implies."""
    queries = readme_queries()
    assert len(queries) == 3
    con = duckdb.connect()
    for table in TABLE_SCHEMAS:
        location = analytics.glue_table(table)["StorageDescriptor"]["Location"]
        folder = written.local / location.removeprefix(f"{analytics.output}/")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet("
                    f"'{folder}/*/*.parquet', hive_partitioning = true, "
                    "hive_types = {'date': 'VARCHAR'})")
    for query in queries:
        # partition projection prunes on a filter of the partition column
        assert re.search(r'WHERE\s+"date"\s+(=|BETWEEN)\s+\'\d{4}-\d{2}-\d{2}\'', query), query
        assert set(re.findall(r"\bFROM\s+(\w+)", query)) <= set(TABLE_SCHEMAS), query
    label_mix, least_confident, errors = (con.execute(q).fetchall() for q in queries)
    assert label_mix == [("(no face)", 1, 33.3), ("happy", 1, 33.3), ("neutral", 1, 33.3)]
    assert [(r[0], r[1]) for r in least_confident] == [("s3://a/c.mp4", "neutral"),
                                                       ("s3://a/a.mp4", "happy")]
    assert [r[:4] for r in errors] == [(EARLIER, "decode", "CorruptVideoError", 1),
                                       (NIGHT, "decode", "CorruptVideoError", 2),
                                       (NIGHT, "read", "ConnectionError", 1)]

