from kizuna.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    http_port: int = 8003
    grpc_port: int = 50053
