"""mesh.json: written atomically without secrets, read into a command's environment under what the caller set,
ignored once the `paymesh up` that wrote it is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from paymesh.ops import mesh_file
from paymesh.ops.databases import without_password


def write(data_dir: Path) -> Path:
    return mesh_file.write(
        data_dir,
        {"order_svc": ["127.0.0.1:41051", "127.0.0.1:41151"], "webhook_svc": ["127.0.0.1:41055"]},
        {"order_svc": "ORDER_SVC", "webhook_svc": "WEBHOOK_SVC"},
        {"PAYMESH_NATS_URL": "nats://127.0.0.1:41222", "PAYMESH_KEY_PEPPER": "secret",
         "GATEWAY_MOCK_PLATFORM_KEY": "x"},
        data_dir / "dev_key.json",
    )


def test_the_file_points_a_command_at_the_mesh_and_the_environment_wins(tmp_path: Path) -> None:
    path = write(tmp_path)
    assert "secret" not in path.read_text() and "PLATFORM" not in path.read_text()
    env, found = mesh_file.running_env({"PAYMESH_DATA_DIR": str(tmp_path), "ORDER_SVC_GRPC_ADDR": "127.0.0.1:9"})
    assert found is not None and found.pid == os.getpid()
    assert env["ORDER_SVC_GRPC_ADDR"] == "127.0.0.1:9", "the caller's variable wins"
    assert env["WEBHOOK_SVC_GRPC_ADDR"] == "127.0.0.1:41055"
    assert env["PAYMESH_NATS_URL"] == "nats://127.0.0.1:41222"
    assert env["PAYMESH_DATA_DIR"] == str(tmp_path)


def test_a_file_left_by_a_dead_up_or_a_broken_one_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "pid": int(dead.stdout)}))
    env, found = mesh_file.running_env({"PAYMESH_DATA_DIR": str(tmp_path)})
    assert found is None and env == {"PAYMESH_DATA_DIR": str(tmp_path)}
    path.write_text("{not json")
    assert mesh_file.running_env({"PAYMESH_DATA_DIR": str(tmp_path)}) == ({"PAYMESH_DATA_DIR": str(tmp_path)}, None)
    mesh_file.remove(tmp_path)
    assert not path.exists()
    mesh_file.remove(tmp_path)  # twice is fine


def test_the_file_names_each_services_metrics_and_store_without_a_password(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://paymesh:hunter2-secret@db.internal:5432/paymesh_order_svc"
    mesh_file.write(
        tmp_path, {"order_svc": ["127.0.0.1:41051"]}, {"order_svc": "ORDER_SVC"}, {}, None,
        metrics={"order_svc": ["127.0.0.1:42051", "127.0.0.1:42151"]},
        databases={"order_svc": without_password(url)},
    )
    assert "hunter2" not in mesh_file.path_of(tmp_path).read_text()
    env, found = mesh_file.running_env({"PAYMESH_DATA_DIR": str(tmp_path)})
    assert found is not None and found.metrics == {"order_svc": ["127.0.0.1:42051", "127.0.0.1:42151"]}
    assert env["ORDER_SVC_METRICS_ADDR"] == "127.0.0.1:42051"
    assert env["ORDER_SVC_DB_URL"] == "postgresql+asyncpg://paymesh@db.internal:5432/paymesh_order_svc"
    assert without_password("sqlite+inloop:///x/order_svc.db") == "sqlite+inloop:///x/order_svc.db"
