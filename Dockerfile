# fender's container image: a static binary on distroless, as uid 65532.
#
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t fender:dev .
#
# deploy/k8s/ runs it as a native sidecar; deploy/k8s/build_test.go runs the
# same build command (CGO_ENABLED=0, -trimpath, these ldflags) and checks
# that the binary is static and reports the stamped version.

FROM golang:1.26 AS build
ARG VERSION=dev
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/fender . \
 && /out/fender version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/fender /fender
USER 65532:65532
# /metrics, /healthz and /readyz. In a container fender listens on all
# interfaces (outside one its default is 127.0.0.1:9464), so that the kubelet
# and the scraper reach them on the pod IP.
ENV FENDER_METRICS_ADDR=0.0.0.0:9464
EXPOSE 9464
ENTRYPOINT ["/fender"]
CMD ["serve"]
