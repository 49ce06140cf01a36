# smbd_py in a container: serves /shares/demo (bind-mount the repository's shares/ there)
# on port 445 with the demo account demo/demo. Installs from wheels built on the host
# (scripts/docker-wheels.sh PYTHON_VERSION), so the build needs no package index.
#   scripts/docker-wheels.sh 3.12 && docker build -t smbd-py .
#   docker build --build-arg BASE=my-bookworm-python:latest ...   (wheels for 3.11 then)
ARG BASE=python:3.12-slim
FROM ${BASE}
ARG WHEELS=docker-wheels
COPY ${WHEELS}/ /tmp/wheels/
# A venv: Debian's python3 refuses system-wide pip installs (PEP 668).
RUN python3 -m venv /opt/smbd_py \
 && /opt/smbd_py/bin/python -m pip install -q --no-index --find-links /tmp/wheels smbd_py \
 && rm -rf /tmp/wheels /root/.cache \
 && mkdir -p /etc/smbd_py /shares/demo \
 && echo demo | /opt/smbd_py/bin/smbd-py user add demo --users /etc/smbd_py/users --password-stdin
COPY scripts/docker-healthcheck.py /usr/local/bin/smbd-py-healthcheck
# Spelled out: an image made by `docker import` has no PATH to extend.
ENV PATH=/opt/smbd_py/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
EXPOSE 445
HEALTHCHECK --interval=5s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/opt/smbd_py/bin/python", "/usr/local/bin/smbd-py-healthcheck"]
ENTRYPOINT ["smbd-py", "serve", "--listen", "0.0.0.0:445", "--share", "demo=/shares/demo", \
            "--users", "/etc/smbd_py/users"]
CMD ["--log-level", "info"]
