from kizuna.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    http_port: int = 8002
    grpc_port: int = 50052
