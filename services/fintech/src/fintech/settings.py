from kizuna.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    http_port: int = 8004
    grpc_port: int = 50054
