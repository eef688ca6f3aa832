# Prometheus and, for compose's `alerts` profile, Alertmanager, from Debian's packages (they cannot be pulled from a
# registry everywhere); their configs come from deploy/ through compose.
FROM debian:trixie-slim AS debian-packages
ENV DEBIAN_FRONTEND=noninteractive
RUN rm -f /etc/apt/apt.conf.d/docker-clean


FROM debian-packages AS alertmanager
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt,sharing=locked \
    apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null \
    && mkdir -p /alertmanager && chown prometheus:prometheus /alertmanager
USER prometheus
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager", "--web.listen-address=0.0.0.0:9093"]


FROM debian-packages AS prometheus
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt,sharing=locked \
    apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]
