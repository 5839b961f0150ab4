"""nginx in two roles: the upstream every peer calls, and the reference reverse proxy.

The upstream serves GET /1k (a 1 KiB static file), echoes POST /echo (ngx_http_echo_module,
the body held in memory) and answers any other path with a 1 KiB body, whatever the method.
"""

from __future__ import annotations

from pathlib import Path

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
ONE_KIB = 1024
#: Bodies up to this size stay in memory, so /echo can send them back.
ECHO_MAX_BODY = "256k"

_COMMON = """
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""

_UPSTREAM = """
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        root {prefix}/www;
        default_type application/octet-stream;
        location = /1k {{ }}
        location = /echo {{
            client_body_buffer_size {echo_max};
            client_max_body_size {echo_max};
            client_body_in_single_buffer on;
            echo_read_request_body;
            echo_request_body;
        }}
        location / {{
            client_max_body_size 0;
            echo_read_request_body;
            echo_duplicate 1 "{one_kib}";
        }}
    }}
"""

_PROXY = """
    upstream origin {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        client_max_body_size 0;
        client_body_buffer_size {echo_max};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def _write(prefix: Path, body: str) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    head = f"load_module {ECHO_MODULE};\n"
    conf = prefix / "nginx.conf"
    conf.write_text(head + _COMMON.format(prefix=prefix, body=body))
    return conf


def upstream_conf(prefix: Path, port: int) -> Path:
    www = prefix / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "1k").write_bytes(b"x" * ONE_KIB)
    body = _UPSTREAM.format(port=port, prefix=prefix, echo_max=ECHO_MAX_BODY, one_kib="y" * ONE_KIB)
    return _write(prefix, body)


def proxy_conf(prefix: Path, port: int, upstream_port: int) -> Path:
    return _write(prefix, _PROXY.format(port=port, upstream_port=upstream_port, echo_max=ECHO_MAX_BODY))


def argv(conf: Path) -> list[str]:
    return ["nginx", "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log")]
